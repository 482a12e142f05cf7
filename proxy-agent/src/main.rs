//! `lanyard-proxy`: the in-pod agent (and, later, the mTLS proxy).

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use lanyard_crds::identity::Identity;
use lanyard_crds::time::SystemClock;
use lanyard_proxy::identity::{Agent, AgentConfig, Credentials};
use lanyard_proxy::metrics::{AgentMetrics, serve_admin};
use tokio::sync::watch;

/// The in-pod agent: a key made here, 24-hour certificates for the pod's
/// identity from the identity service, refreshed without restarts.
#[derive(Debug, Parser)]
#[command(name = "lanyard-proxy", version, about, long_about = None)]
struct Args {
    /// The identity to ask for, e.g.
    /// `web.emojivoto.serviceaccount.identity.linkerd.cluster.local`.
    #[arg(long, env = "LANYARD_PROXY_IDENTITY")]
    identity: Identity,
    /// The token proving the identity: a projected ServiceAccount token
    /// (audience `identity.l5d.io`) or a `lanyard token create` token.
    /// Read again before every request.
    #[arg(long, env = "LANYARD_PROXY_TOKEN_FILE")]
    token_file: PathBuf,
    /// PEM file of the trust anchors (`ca.crt`). Read again before every
    /// request.
    #[arg(long, env = "LANYARD_PROXY_TRUST_ANCHORS")]
    trust_anchors: PathBuf,
    /// The identity service, `host:port`.
    #[arg(
        long,
        env = "LANYARD_PROXY_IDENTITY_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    identity_addr: String,
    /// The identity service's own identity, checked against its TLS
    /// certificate (default: `linkerd-identity.<namespace>.serviceaccount.<identity-domain>`
    /// in the agent's identity domain).
    #[arg(long, env = "LANYARD_PROXY_IDENTITY_SERVICE_NAME")]
    identity_service_name: Option<String>,
    /// Talk to the identity service without TLS: the token crosses the
    /// wire in the clear. Tests on loopback only.
    #[arg(long)]
    insecure_plaintext_identity: bool,
    /// Where to serve `/metrics`, `/ready` and `/live`.
    #[arg(
        long,
        env = "LANYARD_PROXY_ADMIN_ADDR",
        default_value = "127.0.0.1:4191"
    )]
    admin_addr: SocketAddr,
    /// Write `tls.crt`, `tls.key` (0600) and `ca.crt` to `--out-dir` for an
    /// application that reads files, instead of proxying.
    #[arg(long, requires = "out_dir")]
    agent_only: bool,
    /// Where `--agent-only` writes the files (atomically, as a Secret
    /// volume: all three change at once).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// How long one request to the identity service may take.
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    identity_timeout: Duration,
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d: lanyard_crds::duration::GoDuration = s.parse().map_err(|e| format!("{e}"))?;
    d.to_chrono()
        .to_std()
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("`{s}` is not a positive duration"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LANYARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let Some(out_dir) = args.out_dir.filter(|_| args.agent_only) else {
        return Err(
            "the mTLS proxy is not part of this build yet; run the agent alone with --agent-only --out-dir DIR"
                .into(),
        );
    };
    let service_identity = args.identity_service_name.unwrap_or_else(|| {
        let domain = args.identity.domain();
        format!(
            "linkerd-identity.{}.serviceaccount.{domain}",
            domain.control_plane_namespace()
        )
    });
    let metrics = AgentMetrics::new();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let config = AgentConfig {
        identity: args.identity,
        service_addr: args.identity_addr,
        service_identity,
        trust_anchors: args.trust_anchors,
        token_file: args.token_file,
        insecure_plaintext: args.insecure_plaintext_identity,
        timeout: args.identity_timeout,
    };
    let agent = Agent::new(config, SystemClock, metrics).map_err(|e| e.to_string())?;
    let (tx, rx) = watch::channel(None);
    // Ready means the files are written, not just the certificate held.
    let (written_tx, written_rx) = watch::channel(None);
    let (admin, server) = serve_admin(args.admin_addr, Arc::new(registry), written_rx)
        .await
        .map_err(|e| {
            format!(
                "cannot serve the admin endpoints on {}: {e}",
                args.admin_addr
            )
        })?;
    eprintln!("lanyard-proxy: admin on http://{admin} (/metrics, /ready, /live)");
    tokio::spawn(server);
    tokio::spawn(agent.run(tx));
    tokio::select! {
        () = write_files(out_dir, rx, written_tx) => Ok(()),
        () = shutdown_signal() => Ok(()),
    }
}

/// Writes each new certificate into `dir` and then publishes it on
/// `written`; a failed write is retried every 10 seconds until it succeeds
/// or a newer certificate arrives.
async fn write_files(
    dir: PathBuf,
    mut rx: watch::Receiver<Option<Arc<Credentials>>>,
    written: watch::Sender<Option<Arc<Credentials>>>,
) {
    let mut pending: Option<Arc<Credentials>> = None;
    loop {
        let changed = match pending {
            Some(_) => tokio::time::timeout(Duration::from_secs(10), rx.changed())
                .await
                .unwrap_or(Ok(())),
            None => rx.changed().await,
        };
        if changed.is_err() {
            return;
        }
        let Some(credentials) = rx.borrow_and_update().clone() else {
            // Expired and not refreshed: no longer ready.
            pending = None;
            written.send_replace(None);
            continue;
        };
        match credentials.write_files(&dir) {
            Ok(()) => {
                pending = None;
                written.send_replace(Some(credentials.clone()));
                eprintln!(
                    "lanyard-proxy: wrote {} (tls.crt, tls.key, ca.crt) for {}, valid until {}",
                    dir.display(),
                    credentials.identity(),
                    credentials.not_after()
                );
            }
            Err(error) => {
                tracing::error!(%error, "cannot write the certificate files; retrying");
                pending = Some(credentials);
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
