//! The local controller's one embedded store, `DIR/status.db` (SQLite):
//! each Certificate's record (the spec it last saw, its generation and
//! status) and each issuer's status. Secrets stay directories that
//! applications read; this holds everything else the controller keeps.
//!
//! Why a database and not a file per record: a pass that issues 10,000
//! Certificates wrote 10,000 status files (about a dozen system calls and
//! an inode each); here it writes one transaction. Why SQLite: `lanyard
//! get` and `lanyard check` read it from other processes while `lanyard up`
//! writes it, which SQLite's write-ahead log allows (an embedded store that
//! locks its file to one process does not).
//!
//! Consistency: a pass commits its changes in one transaction, after the
//! Secrets they describe are committed (and, under
//! [`Durability::Fsync`], flushed), so a crash leaves the store at the
//! previous pass or this one, never half of it. A Secret written whose
//! record was not is found by the next pass through the revision the
//! Secret carries (`Event::Recorded`), as in a cluster.
//!
//! Migration: a state directory from before the store keeps status as JSON
//! files under `DIR/status/`. The controller loads them into the store in
//! one transaction, then removes `DIR/status/`; readers look at both, the
//! files winning, so a restart between the two steps loses nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lanyard_crds::api::{IssuerKind, IssuerStatus};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::status::{self, Record};
use super::{Durability, LocalError};

/// The store's file in a state directory.
pub const STORE_FILE: &str = "status.db";

/// The schema this code reads and writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS certificates (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS issuers (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
";

/// A Certificate: namespace and name.
pub(super) type CertificateKey = (String, String);

/// An issuer: kind, namespace (empty for a ClusterIssuer) and name.
pub(super) type IssuerKey = (IssuerKind, String, String);

/// What the store holds.
#[derive(Debug, Default)]
pub(super) struct Contents {
    pub(super) records: BTreeMap<CertificateKey, Record>,
    pub(super) issuers: BTreeMap<IssuerKey, IssuerStatus>,
}

/// What one pass changes: records to write (`Some`) or delete (`None`),
/// and issuer statuses to write.
#[derive(Debug, Default)]
pub(super) struct Changes<'a> {
    pub(super) records: Vec<(&'a CertificateKey, Option<&'a Record>)>,
    pub(super) issuers: Vec<(&'a IssuerKey, &'a IssuerStatus)>,
}

/// The writer's handle on the store; one per state directory (the caller
/// holds the directory's lock).
#[derive(Debug)]
pub(super) struct Store {
    conn: Connection,
    path: PathBuf,
}

fn kind_name(kind: IssuerKind) -> &'static str {
    match kind {
        IssuerKind::Issuer => "Issuer",
        IssuerKind::ClusterIssuer => "ClusterIssuer",
    }
}

fn kind_from(name: &str) -> Option<IssuerKind> {
    match name {
        "Issuer" => Some(IssuerKind::Issuer),
        "ClusterIssuer" => Some(IssuerKind::ClusterIssuer),
        _ => None,
    }
}

fn failed(path: &Path) -> impl FnOnce(rusqlite::Error) -> LocalError + '_ {
    move |error| LocalError::Database {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}

/// Refuses a store written by a newer Lanyard.
fn check_schema(conn: &Connection, path: &Path) -> Result<i64, LocalError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(failed(path))?;
    if version > SCHEMA_VERSION {
        return Err(LocalError::Database {
            path: path.to_path_buf(),
            reason: format!(
                "schema version {version} is newer than this Lanyard's ({SCHEMA_VERSION}); \
                 run the Lanyard that wrote it"
            ),
        });
    }
    Ok(version)
}

fn read_contents(conn: &Connection, path: &Path) -> Result<Contents, LocalError> {
    let corrupt = |what: String, reason: String| LocalError::CorruptState {
        path: path.join(what),
        reason,
    };
    let mut contents = Contents::default();
    let mut statement = conn
        .prepare("SELECT namespace, name, record FROM certificates")
        .map_err(failed(path))?;
    let rows = statement
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })
        .map_err(failed(path))?;
    for row in rows {
        let (namespace, name, json) = row.map_err(failed(path))?;
        let record: Record = serde_json::from_str(&json)
            .map_err(|e| corrupt(format!("certificates/{namespace}/{name}"), e.to_string()))?;
        contents.records.insert((namespace, name), record);
    }
    let mut statement = conn
        .prepare("SELECT kind, namespace, name, status FROM issuers")
        .map_err(failed(path))?;
    let rows = statement
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
            ))
        })
        .map_err(failed(path))?;
    for row in rows {
        let (kind, namespace, name, json) = row.map_err(failed(path))?;
        // An issuer's status is recomputed each pass: one that cannot be
        // read is as good as none, as with the files before.
        if let (Some(kind), Ok(status)) = (
            kind_from(&kind),
            serde_json::from_str::<IssuerStatus>(&json),
        ) {
            contents.issuers.insert((kind, namespace, name), status);
        }
    }
    Ok(contents)
}

/// Status as files under `DIR/status/` (before the store): Certificate
/// records, which must parse, and issuer statuses, which are skipped when
/// they do not.
fn read_legacy(state_dir: &Path) -> Result<Option<Contents>, LocalError> {
    let root = state_dir.join("status");
    if !root.is_dir() {
        return Ok(None);
    }
    let records = status::load_records(&root.join("certificates"))?;
    let mut issuers = BTreeMap::new();
    let mut read = |dir: &Path, kind: IssuerKind, namespace: &str| {
        for file in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = file.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if let Some(status) = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<IssuerStatus>(&b).ok())
            {
                issuers.insert((kind, namespace.to_string(), name.to_string()), status);
            }
        }
    };
    for ns in std::fs::read_dir(root.join("issuers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Some(namespace) = ns.file_name().to_str() {
            read(&ns.path(), IssuerKind::Issuer, namespace);
        }
    }
    read(&root.join("clusterissuers"), IssuerKind::ClusterIssuer, "");
    Ok(Some(Contents { records, issuers }))
}

impl Store {
    /// Opens (creating) the store of `state_dir` for writing, moves status
    /// files from before the store into it, and returns what it holds.
    /// Corrupt status files are refused before anything is written.
    pub(super) fn open(
        state_dir: &Path,
        durability: Durability,
    ) -> Result<(Store, Contents), LocalError> {
        let legacy = read_legacy(state_dir)?;
        let path = state_dir.join(STORE_FILE);
        let conn = Connection::open(&path).map_err(failed(&path))?;
        let version = check_schema(&conn, &path)?;
        // One writer (the directory's lock holder), readers in other
        // processes: the write-ahead log lets them read while it writes.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(failed(&path))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(LocalError::Database {
                path,
                reason: format!("cannot use a write-ahead log (journal mode {mode})"),
            });
        }
        let synchronous = match durability {
            // Each commit is on disk before it returns.
            Durability::Fsync => "FULL",
            Durability::Deferred => "OFF",
        };
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {synchronous}; PRAGMA busy_timeout = 5000;"
        ))
        .map_err(failed(&path))?;
        if version < SCHEMA_VERSION {
            conn.execute_batch(&format!(
                "BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(failed(&path))?;
        }
        let mut store = Store { conn, path };
        if let Some(legacy) = legacy {
            let changes = Changes {
                records: legacy.records.iter().map(|(k, r)| (k, Some(r))).collect(),
                issuers: legacy.issuers.iter().collect(),
            };
            store.write(&changes)?;
            tracing::info!(
                certificates = legacy.records.len(),
                issuers = legacy.issuers.len(),
                store = %store.path.display(),
                "moved status files into the store"
            );
            let old = state_dir.join("status");
            if let Err(error) = std::fs::remove_dir_all(&old) {
                tracing::warn!(path = %old.display(), %error, "cannot remove the old status files (they are in the store)");
            }
        }
        let contents = read_contents(&store.conn, &store.path)?;
        Ok((store, contents))
    }

    /// Writes one pass's changes in one transaction: all of them or none.
    pub(super) fn write(&mut self, changes: &Changes<'_>) -> Result<(), LocalError> {
        if changes.records.is_empty() && changes.issuers.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(failed(&path))?;
        {
            let mut upsert = tx
                .prepare(
                    "INSERT INTO certificates (namespace, name, record) VALUES (?1, ?2, ?3)
                     ON CONFLICT (namespace, name) DO UPDATE SET record = excluded.record",
                )
                .map_err(failed(&path))?;
            let mut delete = tx
                .prepare("DELETE FROM certificates WHERE namespace = ?1 AND name = ?2")
                .map_err(failed(&path))?;
            for ((namespace, name), record) in &changes.records {
                match record {
                    Some(record) => {
                        let json = serde_json::to_string(record).expect("records serialise");
                        upsert
                            .execute(params![namespace, name, json])
                            .map_err(failed(&path))?;
                    }
                    None => {
                        delete
                            .execute(params![namespace, name])
                            .map_err(failed(&path))?;
                    }
                }
            }
            let mut issuer = tx
                .prepare(
                    "INSERT INTO issuers (kind, namespace, name, status) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (kind, namespace, name) DO UPDATE SET status = excluded.status",
                )
                .map_err(failed(&path))?;
            for ((kind, namespace, name), status) in &changes.issuers {
                let json = serde_json::to_string(status).expect("statuses serialise");
                issuer
                    .execute(params![kind_name(*kind), namespace, name, json])
                    .map_err(failed(&path))?;
            }
        }
        tx.commit().map_err(failed(&path))
    }
}

/// What a state directory holds, read without writing anything (for
/// `lanyard get` and `lanyard check`, while `lanyard up` may be writing):
/// the store, then status files not yet moved into it, which win.
pub(super) fn read(state_dir: &Path) -> Result<Contents, LocalError> {
    let path = state_dir.join(STORE_FILE);
    let mut contents = if path.exists() {
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(failed(&path))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(failed(&path))?;
        check_schema(&conn, &path)?;
        let has_tables: Option<i64> = conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'certificates'",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(failed(&path))?;
        if has_tables.is_some() {
            read_contents(&conn, &path)?
        } else {
            Contents::default()
        }
    } else {
        Contents::default()
    };
    if let Some(legacy) = read_legacy(state_dir)? {
        contents.records.extend(legacy.records);
        contents.issuers.extend(legacy.issuers);
    }
    Ok(contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_crds::api::CertificateStatus;

    fn record(generation: i64) -> Record {
        Record {
            generation,
            spec: serde_json::json!({"secretName": "web-tls"}),
            status: CertificateStatus {
                revision: Some(generation),
                ..CertificateStatus::default()
            },
        }
    }

    fn key(namespace: &str, name: &str) -> CertificateKey {
        (namespace.to_string(), name.to_string())
    }

    /// A state directory as an older Lanyard left it: one JSON file per
    /// record and per issuer status.
    fn legacy_dir(state: &Path) {
        let certificates = state.join("status/certificates/shop");
        std::fs::create_dir_all(&certificates).unwrap();
        std::fs::write(
            certificates.join("web.json"),
            serde_json::to_vec_pretty(&record(2)).unwrap(),
        )
        .unwrap();
        let cluster = state.join("status/clusterissuers");
        std::fs::create_dir_all(&cluster).unwrap();
        std::fs::write(
            cluster.join("root.json"),
            serde_json::to_vec_pretty(&IssuerStatus::default()).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn status_files_of_an_older_lanyard_move_into_the_store_once() {
        let tmp = tempfile::tempdir().unwrap();
        legacy_dir(tmp.path());
        // Readers see the files before any controller started.
        assert_eq!(
            read(tmp.path()).unwrap().records.get(&key("shop", "web")),
            Some(&record(2))
        );
        let (store, contents) = Store::open(tmp.path(), Durability::Fsync).unwrap();
        assert_eq!(contents.records.get(&key("shop", "web")), Some(&record(2)));
        assert!(contents.issuers.contains_key(&(
            IssuerKind::ClusterIssuer,
            String::new(),
            "root".into()
        )));
        assert!(!tmp.path().join("status").exists(), "the files are gone");
        drop(store);
        let (_store, again) = Store::open(tmp.path(), Durability::Fsync).unwrap();
        assert_eq!(again.records.len(), 1);
    }

    #[test]
    fn a_corrupt_status_file_is_refused_and_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        legacy_dir(tmp.path());
        let bad = tmp.path().join("status/certificates/shop/api.json");
        std::fs::write(&bad, "{").unwrap();
        let error = Store::open(tmp.path(), Durability::Deferred).unwrap_err();
        assert!(
            matches!(&error, LocalError::CorruptState { path, .. } if path == &bad),
            "{error}"
        );
        assert!(!tmp.path().join(STORE_FILE).exists(), "no store was made");
        assert!(
            tmp.path()
                .join("status/certificates/shop/web.json")
                .exists()
        );
    }

    #[test]
    fn a_pass_writes_and_deletes_in_one_transaction_and_readers_in_other_connections_see_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut store, contents) = Store::open(tmp.path(), Durability::Fsync).unwrap();
        assert!(contents.records.is_empty());
        let (web, api) = (key("shop", "web"), key("shop", "api"));
        let issuer = (IssuerKind::Issuer, "shop".to_string(), "ca".to_string());
        let status = IssuerStatus::default();
        store
            .write(&Changes {
                records: vec![(&web, Some(&record(1))), (&api, Some(&record(1)))],
                issuers: vec![(&issuer, &status)],
            })
            .unwrap();
        // Read while the writer holds the store open, as `lanyard get`
        // does while `lanyard up` runs.
        let seen = read(tmp.path()).unwrap();
        assert_eq!(seen.records.len(), 2);
        assert!(seen.issuers.contains_key(&issuer));
        store
            .write(&Changes {
                records: vec![(&web, Some(&record(2))), (&api, None)],
                issuers: vec![],
            })
            .unwrap();
        let seen = read(tmp.path()).unwrap();
        assert_eq!(seen.records.get(&web), Some(&record(2)));
        assert!(!seen.records.contains_key(&api));
        drop(store);
        // And after the writer has gone.
        assert_eq!(read(tmp.path()).unwrap().records.len(), 1);
    }

    #[test]
    fn a_file_that_is_not_a_store_is_refused_with_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(STORE_FILE), vec![7u8; 4096]).unwrap();
        let error = Store::open(tmp.path(), Durability::Deferred).unwrap_err();
        assert!(
            matches!(&error, LocalError::Database { path, .. } if path.ends_with(STORE_FILE)),
            "{error}"
        );
        assert!(read(tmp.path()).is_err());
    }
}
