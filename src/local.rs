//! `lanyard up`, `lanyard apply` and `lanyard get`: the local mode.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, ValueEnum};
use lanyard_crds::duration::GoDuration;
use lanyard_crds::identity::{IdentityDomain, TrustDomain};
use lanyard_crds::time::SystemClock;
use lanyard_rotator::local::manifests;
use lanyard_rotator::local::{
    DEFAULT_CLUSTER_RESOURCE_NAMESPACE, Durability, LocalController, LocalOptions, certificate_rows,
};
use lanyard_rotator::metrics::Metrics;

use crate::ca::CliError;

/// `lanyard up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// The state directory: manifests/, secrets/, status.db.
    #[arg(long, env = "LANYARD_STATE_DIR")]
    state_dir: PathBuf,
    /// The mesh's trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The control plane's namespace: the identity issuer lives there and
    /// names the identity domain `identity.<namespace>.<trust-domain>`.
    #[arg(long, default_value = "linkerd")]
    control_plane_namespace: String,
    /// Where ClusterIssuers' CA Secrets live.
    #[arg(long, default_value = DEFAULT_CLUSTER_RESOURCE_NAMESPACE)]
    cluster_resource_namespace: String,
    /// Where to serve Prometheus metrics.
    #[arg(long, default_value = "127.0.0.1:9402")]
    metrics_addr: SocketAddr,
    /// Where to serve the identity service (Linkerd's `Certify` API, TLS).
    #[arg(long, default_value = "127.0.0.1:8080")]
    identity_addr: SocketAddr,
    /// Serve the identity service without TLS: tokens cross the wire in
    /// the clear. Only for debugging on loopback.
    #[arg(long)]
    insecure_identity_plaintext: bool,
    /// The lifetime of workload certificates (Linkerd's
    /// `issuanceLifetime`), e.g. `24h` or `1m`.
    #[arg(long, default_value = "24h", value_parser = leaf_lifetime)]
    issuance_lifetime: GoDuration,
    /// How long a trust anchor rotation waits, once every bundle holds the
    /// new anchor, before it relies on workloads having read it (the
    /// proxies re-read their anchors file every second).
    #[arg(long, default_value = "5s")]
    propagation_delay: GoDuration,
    /// How long before its end the trust anchor rotates (default: a third
    /// of its lifetime).
    #[arg(long)]
    anchor_renew_before: Option<GoDuration>,
    #[command(flatten)]
    limits: crate::limits::LimitsArgs,
}

/// `lanyard apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The state directory.
    #[arg(long, env = "LANYARD_STATE_DIR")]
    state_dir: PathBuf,
    /// Manifest files (`-` for standard input).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Namespace for objects that do not name one.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
}

/// What `lanyard get` lists.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Resource {
    /// Certificates.
    #[value(alias = "certificate", alias = "cert", alias = "certs")]
    Certificates,
}

/// `lanyard get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// What to list.
    resource: Resource,
    /// The state directory.
    #[arg(long, env = "LANYARD_STATE_DIR")]
    state_dir: PathBuf,
    /// Only this namespace.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
}

/// A workload certificate lifetime (see
/// [`lanyard_crds::linkerd::check_issuance_lifetime`]).
pub(crate) fn leaf_lifetime(text: &str) -> Result<GoDuration, String> {
    let lifetime: GoDuration = text.parse().map_err(|e| format!("{e}"))?;
    lanyard_crds::linkerd::check_issuance_lifetime(lifetime)?;
    Ok(lifetime)
}

fn options(args: &UpArgs) -> Result<LocalOptions, CliError> {
    let trust_domain: TrustDomain = args.trust_domain.parse()?;
    let domain = IdentityDomain::new(&args.control_plane_namespace, trust_domain)?;
    Ok(LocalOptions {
        state_dir: args.state_dir.clone(),
        domain,
        cluster_resource_namespace: args.cluster_resource_namespace.clone(),
        durability: Durability::Fsync,
    })
}

/// The git work tree holding `dir`, if any: the nearest directory at or
/// above it with a `.git` entry (a directory, or a file in a linked
/// worktree or submodule). Read from the file system, so no git binary is
/// needed.
fn enclosing_git_work_tree(dir: &Path) -> Option<PathBuf> {
    let dir = std::fs::canonicalize(dir).ok()?;
    dir.ancestors()
        .find(|d| d.join(".git").exists())
        .map(Path::to_path_buf)
}

/// Runs the local controller until Ctrl-C or SIGTERM.
///
/// One `up` owns a state directory (a lock on `DIR/.lock`); it removes
/// what an interrupted run left, then serves what it can: a write error
/// (a full disk, a read-only directory) fails only the Certificates it
/// touches, and the identity service keeps signing with the issuer it has.
pub fn up(args: UpArgs) -> Result<ExitCode, CliError> {
    let options = options(&args)?;
    std::fs::create_dir_all(&options.state_dir).map_err(|source| CliError::Read {
        path: options.state_dir.clone(),
        source,
    })?;
    let _lock = lanyard_runtime::lock::DirLock::acquire(&options.state_dir)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    if let Some(work_tree) = enclosing_git_work_tree(&options.state_dir) {
        eprintln!(
            "lanyard: warning: the state directory {} is inside the git work tree {}; \
             it holds the trust anchor's private key, one `git add` away from a commit. \
             Keep it out of git (.gitignore) or use a --state-dir outside the work tree",
            options.state_dir.display(),
            work_tree.display()
        );
    }
    if let Err(error) = lanyard_runtime::raise_fd_limit() {
        tracing::warn!(%error, "cannot raise the open-file limit");
    }
    let swept = lanyard_rotator::local::sweep::sweep(&options.state_dir);
    if !swept.is_empty() {
        eprintln!(
            "lanyard: removed {} staged file(s) left by an interrupted run",
            swept.len()
        );
        for path in &swept {
            tracing::info!(path = %path.display(), "removed a staged file left by an interrupted run");
        }
    }
    let runtime = crate::runtime()?;
    let shutdown = {
        let _entered = runtime.enter();
        lanyard_runtime::Shutdown::on_signals().map_err(|source| CliError::Read {
            path: "signal handlers".into(),
            source,
        })?
    };
    let identity_metrics = lanyard_identity::metrics::IdentityMetrics::new();
    let mut metrics = Metrics::new();
    metrics.register_more(|registry| identity_metrics.register(registry));
    let issuer = Arc::new(arc_swap::ArcSwapOption::<lanyard_issuer::IdentityIssuer>::empty());
    let served: lanyard_rotator::local::trust::ServedIssuer = {
        let issuer = issuer.clone();
        Arc::new(move || issuer.load().as_ref().map(|i| i.chain().to_vec()))
    };
    let trust = lanyard_rotator::local::trust::TrustOptions {
        timing: lanyard_trust_bundle::Timing {
            propagation_delay: args.propagation_delay.to_chrono(),
            leaf_lifetime: args.issuance_lifetime.to_chrono(),
            skew: lanyard_rotator::local::trust::DEFAULT_SKEW,
        },
        anchor_renew_before: args.anchor_renew_before.map(GoDuration::to_chrono),
        served_issuer: Some(served),
    };
    let mut controller = LocalController::open(options.clone(), SystemClock, Arc::new(metrics))
        .map_err(local)?
        .with_trust(trust);
    match controller.bootstrap() {
        Ok(true) => eprintln!(
            "lanyard: new trust anchor `{}` in {}; manifests in {}",
            options.domain.anchor_common_name(),
            options.state_dir.join("secrets").display(),
            options.manifests_dir().display()
        ),
        Ok(false) => match controller.ensure_trust_roots() {
            Ok(true) => eprintln!(
                "lanyard: added the trust bundle `{}` to {}",
                lanyard_crds::trust_bundle::LINKERD_TRUST_ROOTS,
                options.manifests_dir().display()
            ),
            Ok(false) => {}
            Err(error) => eprintln!("lanyard: warning: cannot add the trust bundle: {error}"),
        },
        Err(error) => {
            eprintln!("lanyard: cannot set up the trust anchor yet ({error}); trying again");
            controller = controller.retry_bootstrap();
        }
    }
    let token_key = lanyard_identity::token::TokenKey::load_or_create(
        &crate::token::token_key_path(&options.state_dir),
    )?;
    let namespace = options.domain.control_plane_namespace().to_string();
    let reloader = lanyard_identity::reload::IssuerReloader::new(
        options
            .state_dir
            .join("secrets")
            .join(&namespace)
            .join(lanyard_rotator::local::IDENTITY_ISSUER_NAME),
        issuer.clone(),
    )
    .with_metrics(identity_metrics.clone());
    let reload = runtime.spawn(lanyard_identity::serve::watch_files(reloader, SystemClock));
    let identity = lanyard_identity::serve::ServeOptions {
        addr: args.identity_addr,
        issuer: issuer.clone(),
        metrics: identity_metrics,
        rate_limit: Default::default(),
        service_identity: lanyard_crds::identity::Identity::new(
            "linkerd-identity",
            &namespace,
            options.domain.clone(),
        )?,
        insecure_plaintext: args.insecure_identity_plaintext,
        limits: args.limits.limits(),
        leaf_lifetime: args.issuance_lifetime.to_chrono(),
    };
    let scheme = if args.insecure_identity_plaintext {
        "http"
    } else {
        "https"
    };
    let identity_name = identity.service_identity.to_string();
    let identity_task = runtime.spawn({
        let shutdown = shutdown.clone();
        async move {
            let result = lanyard_identity::serve::serve(
                identity,
                std::sync::Arc::new(token_key),
                SystemClock,
                move |addr| {
                    eprintln!("lanyard: identity service on {scheme}://{addr} as {identity_name}");
                },
                shutdown,
            )
            .await;
            if let Err(error) = result {
                eprintln!("error: {error}");
                std::process::exit(1);
            }
        }
    });
    let state_dir = options.state_dir.clone();
    let result = runtime.block_on(lanyard_rotator::local::run::run(
        controller,
        args.metrics_addr,
        move || issuer.load().is_some(),
        move |addr| {
            eprintln!(
                "lanyard: watching {} ; metrics on http://{addr}/metrics ; Ctrl-C to stop",
                state_dir.join("manifests").display()
            );
        },
        shutdown.clone(),
    ));
    // Whatever ended the loop, the identity service stops too.
    shutdown.trigger();
    reload.abort();
    let _ = runtime.block_on(identity_task);
    result.map_err(|e| CliError::Usage(e.to_string()))?;
    eprintln!("lanyard: stopped");
    Ok(ExitCode::SUCCESS)
}

fn local(e: lanyard_rotator::local::LocalError) -> CliError {
    CliError::Usage(e.to_string())
}

/// Validates manifests and adds them to the store; writes nothing when any
/// document is wrong.
pub fn apply(args: ApplyArgs) -> Result<ExitCode, CliError> {
    let mut inputs = Vec::new();
    for file in &args.files {
        let text = if file.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|source| CliError::Read {
                    path: file.clone(),
                    source,
                })?;
            text
        } else {
            std::fs::read_to_string(file).map_err(|source| CliError::Read {
                path: file.clone(),
                source,
            })?
        };
        inputs.push((file.clone(), text));
    }
    let store =
        lanyard_rotator::local::SecretStore::new(args.state_dir.join("secrets"), Durability::Fsync);
    match manifests::apply(
        &args.state_dir.join("manifests"),
        &store,
        &inputs,
        &args.namespace,
    ) {
        Ok(applied) => {
            for a in applied {
                let resource = match a.key.kind {
                    "Secret" => "secret".to_string(),
                    kind => format!("{}.lanyard.dev", kind.to_lowercase()),
                };
                println!("{resource}/{} {}", a.key.name, a.action);
            }
            Ok(ExitCode::SUCCESS)
        }
        // The error says what was applied: nothing, or which objects.
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or("<none>".into(), |t| {
        t.to_rfc3339_opts(SecondsFormat::Secs, true)
    })
}

/// Prints a table like `kubectl get certificates -A`.
pub fn get(args: GetArgs) -> Result<ExitCode, CliError> {
    let Resource::Certificates = args.resource;
    let (rows, errors) = certificate_rows(&args.state_dir).map_err(local)?;
    for e in errors {
        eprintln!("warning: {e}");
    }
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| args.namespace.as_ref().is_none_or(|ns| &r.namespace == ns))
        .collect();
    if rows.is_empty() {
        eprintln!("No resources found.");
        return Ok(ExitCode::SUCCESS);
    }
    let table: Vec<[String; 6]> = std::iter::once([
        "NAMESPACE".to_string(),
        "NAME".into(),
        "READY".into(),
        "SECRET".into(),
        "NOT AFTER".into(),
        "RENEWAL".into(),
    ])
    .chain(rows.into_iter().map(|r| {
        [
            r.namespace,
            r.name,
            r.ready,
            r.secret,
            time(r.not_after),
            time(r.renewal_time),
        ]
    }))
    .collect();
    let widths: Vec<usize> = (0..6)
        .map(|i| table.iter().map(|row| row[i].len()).max().unwrap_or(0))
        .collect();
    for row in table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
    Ok(ExitCode::SUCCESS)
}
