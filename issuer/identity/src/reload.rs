//! Hot reload of the identity issuer from the files of its Secret
//! (`tls.crt`, `tls.key`, `ca.crt`), as `lanyard up` writes them and as a
//! Secret volume mounts them. New material is validated in full before it
//! is swapped in; invalid material is refused and the old issuer keeps
//! serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use chrono::{DateTime, Utc};

use crate::metrics::IdentityMetrics;
use lanyard_issuer::Certificate;
use lanyard_issuer::IdentityIssuer;
use lanyard_issuer::SigningKey;
use lanyard_issuer::{Error, Role};

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
    /// No issuer has been loaded and its files do not exist yet.
    Waiting,
}

/// Keeps `current` holding the latest valid issuer, from the files of its
/// Secret's directory ([`IssuerReloader::poll`]) or from a Secret read
/// through the API ([`IssuerReloader::offer`]). Every change is logged and
/// counted in [`IdentityMetrics`].
#[derive(Debug)]
pub struct IssuerReloader {
    source: String,
    dir: Option<PathBuf>,
    current: Arc<ArcSwapOption<IdentityIssuer>>,
    seen: Option<ring::digest::Digest>,
    missing_reported: bool,
    waiting_reported: bool,
    metrics: IdentityMetrics,
}

impl IssuerReloader {
    /// A reloader for the Secret directory `dir` feeding `current`.
    pub fn new(dir: impl Into<PathBuf>, current: Arc<ArcSwapOption<IdentityIssuer>>) -> Self {
        let dir = dir.into();
        IssuerReloader {
            source: dir.display().to_string(),
            dir: Some(dir),
            current,
            seen: None,
            missing_reported: false,
            waiting_reported: false,
            metrics: IdentityMetrics::default(),
        }
    }

    /// A reloader fed by [`IssuerReloader::offer`] with material from
    /// `source` (e.g. `Secret linkerd/linkerd-identity-issuer`), which
    /// names it in errors.
    pub fn for_source(
        source: impl Into<String>,
        current: Arc<ArcSwapOption<IdentityIssuer>>,
    ) -> Self {
        IssuerReloader {
            source: source.into(),
            dir: None,
            current,
            seen: None,
            missing_reported: false,
            waiting_reported: false,
            metrics: IdentityMetrics::default(),
        }
    }

    /// Counts loads and refusals, and the issuer's expiry, into `metrics`.
    pub fn with_metrics(mut self, metrics: IdentityMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The issuer the service signs with.
    pub fn current(&self) -> &Arc<ArcSwapOption<IdentityIssuer>> {
        &self.current
    }

    /// Reads the directory's files; when they changed, validates them at
    /// `now` and swaps the new issuer in, or refuses it and keeps the old
    /// one. A reloader made by [`IssuerReloader::for_source`] has no
    /// directory and always answers [`Reload::Unchanged`].
    pub fn poll(&mut self, now: DateTime<Utc>) -> Reload {
        let Some(dir) = &self.dir else {
            return Reload::Unchanged;
        };
        match read_files(dir) {
            Ok([crt, key, ca]) => {
                self.missing_reported = false;
                self.offer(&crt, &key, &ca, now)
            }
            Err(e) if self.current.load().is_none() && is_not_found(&e) => {
                // Not issued yet (a first start): a waiting state, not a
                // refusal, so a healthy start fires no alert.
                if !self.waiting_reported {
                    tracing::info!(source = %self.source, "waiting for the identity issuer to be issued");
                    self.waiting_reported = true;
                }
                Reload::Waiting
            }
            Err(e) => {
                // Unreadable files are reported once, like refused
                // material; when they come back they are looked at afresh.
                if !self.missing_reported {
                    self.refused(&e);
                    self.missing_reported = true;
                }
                self.seen = None;
                Reload::Refused(e)
            }
        }
    }

    /// Offers issuer material: `tls.crt` (the issuer, then any
    /// intermediates), `tls.key`, `ca.crt` (the anchors). When it differs
    /// from the last material offered, it is validated at `now` and
    /// swapped in, or refused while the old issuer keeps serving.
    pub fn offer(
        &mut self,
        tls_crt: &[u8],
        tls_key: &[u8],
        ca_crt: &[u8],
        now: DateTime<Utc>,
    ) -> Reload {
        let digest = {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            for part in [tls_crt, tls_key, ca_crt] {
                ctx.update(&(part.len() as u64).to_be_bytes());
                ctx.update(part);
            }
            ctx.finish()
        };
        if self.seen.as_ref().map(|d| d.as_ref()) == Some(digest.as_ref()) {
            return Reload::Unchanged;
        }
        // Remember refused material too, so it is reported once, not on
        // every poll; a later change is looked at afresh.
        self.seen = Some(digest);
        let what = |name: &str| match &self.dir {
            Some(dir) => dir.join(name).display().to_string(),
            None => format!("{}, key {name}", self.source),
        };
        match load(what, [tls_crt, tls_key, ca_crt], now) {
            Ok(issuer) => {
                tracing::info!(
                    source = %self.source,
                    issuer = issuer.certificate().subject(),
                    not_after = %issuer.certificate().not_after(),
                    "identity issuer loaded"
                );
                for anchor in issuer.expired_anchors() {
                    tracing::warn!(
                        source = %self.source,
                        anchor = anchor.subject(),
                        not_after = %anchor.not_after(),
                        "skipped an expired trust anchor in ca.crt"
                    );
                }
                self.metrics.issuer_loaded(&issuer);
                self.current.store(Some(Arc::new(issuer)));
                Reload::Loaded
            }
            Err(e) => {
                self.refused(&e);
                Reload::Refused(e)
            }
        }
    }

    fn refused(&self, error: &Error) {
        let serving = self.current.load().is_some();
        tracing::warn!(
            source = %self.source,
            %error,
            "identity issuer material refused; {}",
            if serving { "the previous issuer keeps serving" } else { "no issuer is loaded" }
        );
        self.metrics.issuer_refused();
    }
}

fn is_not_found(error: &Error) -> bool {
    matches!(error, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
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
    let [crt, key, ca] = read_files(dir)?;
    let what = |name: &str| dir.join(name).display().to_string();
    load(what, [&crt, &key, &ca], now)
}

fn load(
    what: impl Fn(&str) -> String,
    files: [&[u8]; 3],
    now: DateTime<Utc>,
) -> Result<IdentityIssuer, Error> {
    for (name, bytes) in ["tls.crt", "tls.key", "ca.crt"].into_iter().zip(files) {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::Missing { what: what(name) });
        }
    }
    let chain = Certificate::parse_pem_bundle(files[0], &what("tls.crt"))?;
    let key = SigningKey::from_pem(files[1], &what("tls.key"))?;
    let anchors = Certificate::parse_pem_bundle(files[2], &what("ca.crt"))?;
    let issuer = chain.first().ok_or(Error::EmptyChain {
        role: Role::IdentityIssuer,
    })?;
    let domain = IdentityIssuer::domain_from_common_name(issuer)?;
    IdentityIssuer::new(anchors, chain, key, domain, now)
}
