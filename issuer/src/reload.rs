//! Hot reload of the identity issuer from the files of its Secret
//! (`tls.crt`, `tls.key`, `ca.crt`), as `lanyard up` writes them and as a
//! Secret volume mounts them. New material is validated in full before it
//! is swapped in; invalid material is refused and the old issuer keeps
//! serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use chrono::{DateTime, Utc};

use crate::ca::IdentityIssuer;
use crate::cert::Certificate;
use crate::key::SigningKey;
use crate::{Error, Role};

/// What one look at the issuer files found.
#[derive(Debug)]
#[non_exhaustive]
pub enum Reload {
    /// The files are as they were last time.
    Unchanged,
    /// New material was validated and swapped in.
    Loaded,
    /// New material was refused; the previous issuer (if any) keeps serving.
    Refused(Error),
}

/// Watches an issuer Secret's directory and keeps `current` holding the
/// latest valid issuer.
#[derive(Debug)]
pub struct IssuerReloader {
    dir: PathBuf,
    current: Arc<ArcSwapOption<IdentityIssuer>>,
    seen: Option<ring::digest::Digest>,
}

impl IssuerReloader {
    /// A reloader for the Secret directory `dir` feeding `current`.
    pub fn new(dir: impl Into<PathBuf>, current: Arc<ArcSwapOption<IdentityIssuer>>) -> Self {
        IssuerReloader {
            dir: dir.into(),
            current,
            seen: None,
        }
    }

    /// The issuer the service signs with.
    pub fn current(&self) -> &Arc<ArcSwapOption<IdentityIssuer>> {
        &self.current
    }

    /// Reads the files; when they changed, validates them at `now` and
    /// swaps the new issuer in, or refuses it and keeps the old one.
    pub fn poll(&mut self, now: DateTime<Utc>) -> Reload {
        let files = match read_files(&self.dir) {
            Ok(files) => files,
            Err(e) => return self.refuse(None, e),
        };
        let digest = {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            for part in &files {
                ctx.update(&(part.len() as u64).to_be_bytes());
                ctx.update(part);
            }
            ctx.finish()
        };
        if self.seen.as_ref().map(|d| d.as_ref()) == Some(digest.as_ref()) {
            return Reload::Unchanged;
        }
        match load(&self.dir, &files, now) {
            Ok(issuer) => {
                self.current.store(Some(Arc::new(issuer)));
                self.seen = Some(digest);
                Reload::Loaded
            }
            Err(e) => self.refuse(Some(digest), e),
        }
    }

    fn refuse(&mut self, digest: Option<ring::digest::Digest>, error: Error) -> Reload {
        // Remember refused material too, so it is reported once, not on
        // every poll; a later change is looked at afresh.
        self.seen = digest;
        Reload::Refused(error)
    }
}

fn read_files(dir: &Path) -> Result<[Vec<u8>; 3], Error> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| Error::Io { path, source })
    };
    Ok([read("tls.crt")?, read("tls.key")?, read("ca.crt")?])
}

/// Validates an issuer from its Secret's files: `tls.crt` (the issuer,
/// then any intermediates), `tls.key`, `ca.crt` (the anchors).
pub fn load_issuer_files(dir: &Path, now: DateTime<Utc>) -> Result<IdentityIssuer, Error> {
    load(dir, &read_files(dir)?, now)
}

fn load(dir: &Path, files: &[Vec<u8>; 3], now: DateTime<Utc>) -> Result<IdentityIssuer, Error> {
    let what = |name: &str| dir.join(name).display().to_string();
    let chain = Certificate::parse_pem_bundle(&files[0], &what("tls.crt"))?;
    let key = SigningKey::from_pem(&files[1], &what("tls.key"))?;
    let anchors = Certificate::parse_pem_bundle(&files[2], &what("ca.crt"))?;
    let issuer = chain.first().ok_or(Error::EmptyChain {
        role: Role::IdentityIssuer,
    })?;
    let domain = IdentityIssuer::domain_from_common_name(issuer)?;
    IdentityIssuer::new(anchors, chain, key, domain, now)
}
