//! `lanyard ca`: make an anchor and issuer, sign CSRs, explain and check
//! certificates. The files are the ones `linkerd install` and `step` use:
//! `ca.crt`, `ca.key`, `issuer.crt`, `issuer.key`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, TimeDelta, Utc};
use clap::{Args, Subcommand};
use lanyard_crds::duration::GoDuration;
use lanyard_crds::identity::{Identity, IdentityDomain, TrustDomain};
use lanyard_crds::time::Clock;
use lanyard_files::{FileMode, StagedFiles};
use lanyard_issuer::{
    Certificate, IdentityIssuer, KeyAlgorithm, SigningKey, TrustAnchor, csr_der_from_pem, describe,
    verify_chain,
};

/// How close to expiry a CA may come before `ca check` warns, as `linkerd
/// check` does.
const EXPIRY_WARNING: TimeDelta = TimeDelta::days(60);

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a trust anchor and an identity issuer signed by it.
    Init(InitArgs),
    /// Sign a workload certificate for an identity.
    Issue(IssueArgs),
    /// Explain certificates and chains.
    Inspect(InspectArgs),
    /// Validate an anchor and issuer pair, warning when either expires soon.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to write ca.crt, ca.key, issuer.crt and issuer.key into.
    #[arg(long)]
    out: PathBuf,
    /// The mesh's trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The control plane's namespace; the identity domain is
    /// identity.<namespace>.<trust-domain>.
    #[arg(long, default_value = "linkerd")]
    control_plane_namespace: String,
    /// Trust anchor lifetime, Go duration syntax.
    #[arg(long, default_value = "87600h", conflicts_with = "anchor_cert")]
    anchor_lifetime: GoDuration,
    /// Keep this existing trust anchor (PEM, made by Lanyard, step or
    /// openssl) and make only a new identity issuer under it.
    #[arg(long, requires = "anchor_key")]
    anchor_cert: Option<PathBuf>,
    /// The existing trust anchor's private key (PKCS#8, SEC1 or PKCS#1 PEM).
    #[arg(long, requires = "anchor_cert")]
    anchor_key: Option<PathBuf>,
    /// Identity issuer lifetime; clamped to the anchor's.
    #[arg(long, default_value = "8760h")]
    issuer_lifetime: GoDuration,
    /// ecdsa-p256, ecdsa-p384, ed25519, rsa-2048, rsa-3072 or rsa-4096.
    #[arg(long, default_value = "ecdsa-p256")]
    key_algorithm: String,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Directory holding ca.crt, issuer.crt and issuer.key.
    #[arg(long)]
    ca_dir: PathBuf,
    /// A PEM certificate signing request (from `openssl req`, `step`).
    #[arg(long, conflicts_with = "key_out", required_unless_present = "key_out")]
    csr: Option<PathBuf>,
    /// Make a new key here (0600) instead of reading a CSR.
    #[arg(long)]
    key_out: Option<PathBuf>,
    /// Algorithm of the key made for --key-out.
    #[arg(long, default_value = "ecdsa-p256", requires = "key_out")]
    key_algorithm: String,
    /// The identity, e.g. web.emojivoto.serviceaccount.identity.linkerd.cluster.local.
    #[arg(long)]
    identity: String,
    /// Leaf lifetime, Go duration syntax; clamped to the issuer's.
    #[arg(long, default_value = "24h")]
    lifetime: GoDuration,
    /// Where to write the leaf followed by the issuer.
    #[arg(long)]
    out: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// PEM files holding a certificate or a chain (leaf first).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Trust anchors to verify each chain against.
    #[arg(long)]
    ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Directory holding ca.crt, issuer.crt, issuer.key (and ca.key, if kept).
    #[arg(long)]
    ca_dir: PathBuf,
}

/// The four files of a CA directory.
struct CaDir {
    anchor_crt: PathBuf,
    anchor_key: PathBuf,
    issuer_crt: PathBuf,
    issuer_key: PathBuf,
}

impl CaDir {
    fn new(dir: &Path) -> Self {
        CaDir {
            anchor_crt: dir.join("ca.crt"),
            anchor_key: dir.join("ca.key"),
            issuer_crt: dir.join("issuer.crt"),
            issuer_key: dir.join("issuer.key"),
        }
    }

    /// Loads and validates the issuer, as `linkerd install` would take it.
    fn load_issuer(&self, now: DateTime<Utc>) -> Result<IdentityIssuer, CliError> {
        let anchors = read_certs(&self.anchor_crt)?;
        let chain = read_certs(&self.issuer_crt)?;
        let key = SigningKey::from_pem(&read(&self.issuer_key)?, &display(&self.issuer_key))?;
        let first = chain
            .first()
            .ok_or(lanyard_issuer::Error::NoIssuerCertificate)?;
        let domain = IdentityIssuer::domain_from_common_name(first)?;
        Ok(IdentityIssuer::new(anchors, chain, key, domain, now)?)
    }
}

/// Errors of the CLI itself; the CA's own errors pass through.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Ca(#[from] lanyard_issuer::Error),
    /// Writing files failed.
    #[error(transparent)]
    Files(#[from] lanyard_files::Error),
    #[error(transparent)]
    Identity(#[from] lanyard_crds::identity::IdentityError),
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Csr {
        path: PathBuf,
        source: lanyard_issuer::CsrError,
    },
    #[error("{0}")]
    Usage(String),
    /// Files `ca init` would replace exist and `--force` was not given.
    #[error(
        "{} already {}; pass --force to replace {}",
        paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        if paths.len() == 1 { "exists" } else { "exist" },
        if paths.len() == 1 { "it" } else { "them" },
    )]
    WouldOverwrite { paths: Vec<PathBuf> },
}

pub fn run(command: CaCommand, clock: &dyn Clock) -> Result<ExitCode, CliError> {
    match command {
        CaCommand::Init(args) => init(args, clock.now()),
        CaCommand::Issue(args) => issue(args, clock.now()),
        CaCommand::Inspect(args) => inspect(args, clock.now()),
        CaCommand::Check(args) => check(args, clock.now()),
    }
}

fn init(args: InitArgs, now: DateTime<Utc>) -> Result<ExitCode, CliError> {
    let trust_domain: TrustDomain = args.trust_domain.parse()?;
    let domain = IdentityDomain::new(&args.control_plane_namespace, trust_domain)?;
    let algorithm: KeyAlgorithm = args.key_algorithm.parse()?;
    let files = CaDir::new(&args.out);
    // An anchor given at the very path it would be written to is kept as
    // it is (rotating the issuer in place): it is neither rewritten nor
    // "overwritten".
    let keep_anchor_crt = args
        .anchor_cert
        .as_deref()
        .is_some_and(|given| same_file(given, &files.anchor_crt));
    let keep_anchor_key = args
        .anchor_key
        .as_deref()
        .is_some_and(|given| same_file(given, &files.anchor_key));
    let mut written = Vec::new();
    if !keep_anchor_crt {
        written.push(&files.anchor_crt);
    }
    if !keep_anchor_key {
        written.push(&files.anchor_key);
    }
    written.extend([&files.issuer_crt, &files.issuer_key]);
    // Refuse before generating anything, so a mistaken run costs nothing.
    if !args.force {
        let existing: Vec<PathBuf> = written
            .iter()
            .filter(|p| p.exists())
            .map(|p| p.to_path_buf())
            .collect();
        if !existing.is_empty() {
            return Err(CliError::WouldOverwrite { paths: existing });
        }
    }
    let anchor = match (&args.anchor_cert, &args.anchor_key) {
        (Some(cert), Some(key)) => import_anchor(cert, key, now)?,
        _ => TrustAnchor::generate(&domain, lifetime(args.anchor_lifetime)?, algorithm, now)?,
    };
    let (issuer, validity) =
        anchor.issue_identity_issuer(&domain, lifetime(args.issuer_lifetime)?, algorithm, now)?;
    std::fs::create_dir_all(&args.out).map_err(|source| CliError::Read {
        path: args.out.clone(),
        source,
    })?;
    let mut staged = StagedFiles::new();
    if !keep_anchor_crt {
        staged.stage(
            &files.anchor_crt,
            anchor.certificate().to_pem().as_bytes(),
            FileMode::Public,
        )?;
    }
    if !keep_anchor_key {
        staged.stage(
            &files.anchor_key,
            anchor.key().to_pkcs8_pem().as_bytes(),
            FileMode::Secret,
        )?;
    }
    staged.stage(
        &files.issuer_crt,
        issuer.certificate().to_pem().as_bytes(),
        FileMode::Public,
    )?;
    staged.stage(
        &files.issuer_key,
        issuer.key().to_pkcs8_pem().as_bytes(),
        FileMode::Secret,
    )?;
    staged.commit(args.force)?;

    if let Some(requested) = validity.clamped_from {
        eprintln!(
            "warning: the identity issuer would have lived until {}, past the trust anchor; \
             clamped to the anchor's notAfter {}",
            requested.to_rfc3339(),
            validity.not_after.to_rfc3339()
        );
    }
    println!(
        "trust anchor     {}  {}  (valid until {}{})",
        display(&files.anchor_crt),
        anchor.certificate().subject(),
        anchor.certificate().not_after().to_rfc3339(),
        if args.anchor_cert.is_some() {
            "; the existing anchor, kept"
        } else {
            ""
        }
    );
    println!(
        "trust anchor key {}  ({})",
        display(&files.anchor_key),
        if keep_anchor_key {
            "kept as it was"
        } else {
            "0600"
        }
    );
    println!(
        "identity issuer  {}  {}  (valid until {})",
        display(&files.issuer_crt),
        issuer.certificate().subject(),
        issuer.certificate().not_after().to_rfc3339()
    );
    println!("issuer key       {}  (0600)", display(&files.issuer_key));
    println!("identity domain  {}", issuer.domain());
    Ok(ExitCode::SUCCESS)
}

/// Whether `a` and `b` name one existing file (however each is spelled).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Reads an existing anchor and its key, validated as `ca check` does.
fn import_anchor(cert: &Path, key: &Path, now: DateTime<Utc>) -> Result<TrustAnchor, CliError> {
    let mut certs = read_certs(cert)?;
    if certs.len() != 1 {
        return Err(CliError::Usage(format!(
            "{} holds {} certificates; --anchor-cert takes exactly one, the anchor to sign with",
            display(cert),
            certs.len()
        )));
    }
    let key = SigningKey::from_pem(&read(key)?, &display(key))?;
    Ok(TrustAnchor::new(certs.remove(0), key, now)?)
}

fn issue(args: IssueArgs, now: DateTime<Utc>) -> Result<ExitCode, CliError> {
    let issuer = CaDir::new(&args.ca_dir).load_issuer(now)?;
    let identity =
        Identity::parse(&args.identity, issuer.domain()).map_err(lanyard_issuer::Error::from)?;
    let mut staged = StagedFiles::new();
    let csr_der = match (&args.csr, &args.key_out) {
        (Some(path), _) => csr_der_from_pem(&read(path)?).map_err(|source| CliError::Csr {
            path: path.clone(),
            source,
        })?,
        (None, Some(key_out)) => {
            let key = SigningKey::generate(args.key_algorithm.parse()?)?;
            staged.stage(key_out, key.to_pkcs8_pem().as_bytes(), FileMode::Secret)?;
            key.certificate_signing_request(&identity)?
        }
        (None, None) => return Err(CliError::Usage("give --csr FILE or --key-out FILE".into())),
    };
    let leaf = issuer
        .issue(&csr_der, &identity, lifetime(args.lifetime)?, now)
        .map_err(|e| match (e, &args.csr) {
            (lanyard_issuer::Error::Csr(source), Some(path)) => CliError::Csr {
                path: path.clone(),
                source,
            },
            (e, _) => e.into(),
        })?;
    staged.stage(&args.out, leaf.to_pem_chain().as_bytes(), FileMode::Public)?;
    staged.commit(args.force)?;
    if let Some(requested) = leaf.validity.clamped_from {
        eprintln!(
            "warning: the certificate would have lived until {}, past the identity issuer; \
             clamped to the issuer's notAfter {}",
            requested.to_rfc3339(),
            leaf.validity.not_after.to_rfc3339()
        );
    }
    println!(
        "signed {} (valid {} to {}) -> {}",
        identity,
        leaf.validity.not_before.to_rfc3339(),
        leaf.validity.not_after.to_rfc3339(),
        display(&args.out)
    );
    if let Some(key_out) = &args.key_out {
        println!("key -> {} (0600)", display(key_out));
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(args: InspectArgs, now: DateTime<Utc>) -> Result<ExitCode, CliError> {
    let anchors = match &args.ca {
        Some(path) => Some(read_certs(path)?),
        None => None,
    };
    let mut all_verify = true;
    for (i, path) in args.files.iter().enumerate() {
        let chain = read_certs(path)?;
        if i > 0 {
            println!();
        }
        println!("== {} ({} certificate(s))", display(path), chain.len());
        for (n, cert) in chain.iter().enumerate() {
            println!("-- certificate {}", n + 1);
            println!("{}", describe(cert, now));
        }
        if let Some(anchors) = &anchors {
            match verify_chain(&chain, anchors, now) {
                Ok(path) => {
                    let names: Vec<_> = path.iter().map(|c| c.subject()).collect();
                    println!("Chain:          verifies: {}", names.join(" -> "));
                }
                Err(e) => {
                    all_verify = false;
                    println!("Chain:          DOES NOT VERIFY: {e}");
                }
            }
        }
    }
    Ok(if all_verify {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check(args: CheckArgs, now: DateTime<Utc>) -> Result<ExitCode, CliError> {
    let files = CaDir::new(&args.ca_dir);
    let issuer = match files.load_issuer(now) {
        Ok(issuer) => issuer,
        Err(e) => {
            println!("× {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut anchors_ok = Vec::new();
    for anchor in issuer.anchors() {
        anchors_ok.push(format!(
            "√ trust anchor `{}` is a valid CA until {}",
            anchor.subject(),
            anchor.not_after().to_rfc3339()
        ));
    }
    if files.anchor_key.exists() {
        let key = SigningKey::from_pem(&read(&files.anchor_key)?, &display(&files.anchor_key))?;
        let owner = issuer
            .anchors()
            .iter()
            .find(|a| key.matches_public_key(a.public_key_raw()));
        match owner {
            Some(anchor) => {
                TrustAnchor::new(anchor.clone(), key, now)?;
                anchors_ok.push(format!(
                    "√ {} is the key of trust anchor `{}`",
                    display(&files.anchor_key),
                    anchor.subject()
                ));
            }
            None => {
                println!(
                    "× {} is not the key of any trust anchor in {}",
                    display(&files.anchor_key),
                    display(&files.anchor_crt)
                );
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    for line in anchors_ok {
        println!("{line}");
    }
    let cert = issuer.certificate();
    println!(
        "√ identity issuer `{}` is a valid CA until {}, signed by a trust anchor",
        cert.subject(),
        cert.not_after().to_rfc3339()
    );
    println!(
        "√ {} is the identity issuer's key",
        display(&files.issuer_key)
    );
    println!("√ identity domain {}", issuer.domain());
    let mut warned = false;
    let expiring = issuer
        .anchors()
        .iter()
        .map(|a| ("trust anchor", a))
        .chain(std::iter::once(("identity issuer", cert)));
    for (role, c) in expiring {
        let left = c.not_after() - now;
        if left < EXPIRY_WARNING {
            warned = true;
            println!(
                "‼ the {role} `{}` expires in {} days ({}); rotate it",
                c.subject(),
                left.num_days(),
                c.not_after().to_rfc3339()
            );
        }
    }
    if warned {
        println!("Status check results are ‼ (warnings)");
    } else {
        println!("Status check results are √");
    }
    Ok(ExitCode::SUCCESS)
}

fn lifetime(d: GoDuration) -> Result<TimeDelta, CliError> {
    let delta = d.to_chrono();
    if delta <= TimeDelta::zero() {
        return Err(CliError::Usage(format!("lifetime `{d}` must be positive")));
    }
    Ok(delta)
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<Certificate>, CliError> {
    Ok(Certificate::parse_pem_bundle(&read(path)?, &display(path))
        .map_err(lanyard_issuer::Error::from)?)
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
