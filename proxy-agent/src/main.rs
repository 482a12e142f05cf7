//! `lanyard-proxy`: the in-pod agent and mTLS proxy.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use lanyard_crds::identity::Identity;
use lanyard_crds::time::{Clock, SystemClock};
use lanyard_policy::{
    DEFAULT_CLUSTER_NETWORKS, DefaultPolicy, Policy, PolicyDir, PolicyOptions, PolicyReload,
    Workload,
};
use lanyard_proxy::identity::{Agent, AgentConfig, Credentials};
use lanyard_proxy::metrics::{AgentMetrics, admin_endpoints};
use lanyard_proxy::proxy::metrics::ProxyMetrics;
use lanyard_proxy::proxy::tls::{CurrentCert, TrustBundle};
use lanyard_proxy::proxy::{Drain, Inbound, OutboundRoute, serve_inbound, serve_outbound};
use lanyard_runtime::Shutdown;
use lanyard_runtime::listen::{BoundedListener, Limits};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A server allocator: the proxy's request path allocates and frees small
/// buffers and headers on every request, which glibc's malloc serves
/// with locks and consolidation that showed in the profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    #[arg(long)]
    agent_only: bool,
    /// Where `--agent-only` writes the files (atomically, as a Secret
    /// volume: all three change at once).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Proxy mode: where to accept inbound mTLS (and plaintext, treated as
    /// unauthenticated).
    #[arg(
        long,
        env = "LANYARD_PROXY_INBOUND_ADDR",
        default_value = "0.0.0.0:4143"
    )]
    inbound_addr: SocketAddr,
    /// Proxy mode: the application's address, where allowed traffic goes.
    /// Its port is the one policy is decided for.
    #[arg(long, env = "LANYARD_PROXY_APP_ADDR", default_value = "127.0.0.1:8080")]
    app_addr: SocketAddr,
    /// Proxy mode: the pod's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Proxy mode: a pod label, `key=value` (repeat for more); Servers'
    /// podSelectors match these.
    #[arg(long = "pod-label", value_parser = key_value)]
    pod_labels: Vec<(String, String)>,
    /// Proxy mode: a named container port, `name=port` (repeat for more).
    #[arg(long = "named-port", value_parser = named_port)]
    named_ports: Vec<(String, u16)>,
    /// Proxy mode: a directory of policy manifests (Server,
    /// AuthorizationPolicy, MeshTLSAuthentication, NetworkAuthentication,
    /// HTTPRoute), reloaded when it changes.
    #[arg(long, env = "LANYARD_PROXY_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
    /// Proxy mode: the policy for ports no Server covers (the
    /// `config.linkerd.io/default-inbound-policy` values).
    #[arg(
        long,
        env = "LANYARD_PROXY_DEFAULT_POLICY",
        default_value = "all-unauthenticated"
    )]
    default_policy: DefaultPolicy,
    /// Worker threads of the proxy's runtime (Linkerd's proxy reads
    /// `LINKERD2_PROXY_CORES` the same way): the cores it may use at once.
    #[arg(long, env = "LANYARD_PROXY_CORES", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    cores: u16,
    /// Proxy mode: the cluster's networks, for the `cluster-*` policies.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_CLUSTER_NETWORKS.map(String::from))]
    cluster_networks: Vec<String>,
    /// Proxy mode: an outbound route `LISTEN=TARGET,IDENTITY`: plaintext
    /// from the application on LISTEN goes over mTLS to the peer proxy at
    /// TARGET, which must present IDENTITY (repeat for more).
    #[arg(long = "outbound", value_parser = outbound_route)]
    outbound: Vec<(SocketAddr, OutboundRoute)>,
    /// How long one request to the identity service may take.
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    identity_timeout: Duration,
    /// Proxy mode: connections each listener (inbound, every outbound)
    /// holds at once; more are closed on arrival and counted in
    /// `lanyard_proxy_{inbound,outbound}_connections_refused_total`.
    #[arg(long, default_value_t = lanyard_runtime::listen::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Proxy mode: time a new connection has for its first bytes and TLS
    /// handshake (inbound), or to reach the peer and finish mTLS
    /// (outbound).
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    handshake_timeout: Duration,
    /// Proxy mode: an HTTP connection that moves no bytes for this long, or
    /// an HTTP/1 connection that sends no whole request head for this long,
    /// is closed gracefully.
    #[arg(long, default_value = "2m", value_parser = positive_duration)]
    idle_timeout: Duration,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected key=value"))?;
    Ok((k.to_string(), v.to_string()))
}

fn named_port(s: &str) -> Result<(String, u16), String> {
    let (name, port) = key_value(s)?;
    let port = port
        .parse()
        .map_err(|_| format!("`{s}`: the port must be a number"))?;
    Ok((name, port))
}

fn outbound_route(s: &str) -> Result<(SocketAddr, OutboundRoute), String> {
    let usage = || {
        format!(
            "`{s}`: expected LISTEN=TARGET,IDENTITY, e.g. 127.0.0.1:4140=10.0.0.7:4143,api.shop.serviceaccount.identity.linkerd.cluster.local"
        )
    };
    let (listen, rest) = s.split_once('=').ok_or_else(usage)?;
    let (target, identity) = rest.split_once(',').ok_or_else(usage)?;
    let identity: Identity = identity.parse().map_err(|e| format!("`{identity}`: {e}"))?;
    Ok((
        listen.parse().map_err(|_| usage())?,
        OutboundRoute {
            target: target.parse().map_err(|_| usage())?,
            identity: identity.to_string(),
        },
    ))
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
        .worker_threads(usize::from(args.cores))
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
    if args.agent_only && args.out_dir.is_none() {
        return Err("--agent-only needs --out-dir DIR".into());
    }
    // Signals are caught from here on, whatever is running.
    let shutdown = Shutdown::on_signals().map_err(|e| format!("cannot catch signals: {e}"))?;
    if let Err(error) = lanyard_runtime::raise_fd_limit() {
        tracing::warn!(%error, "cannot raise the open-file limit");
    }
    let service_identity = args.identity_service_name.clone().unwrap_or_else(|| {
        let domain = args.identity.domain();
        format!(
            "linkerd-identity.{}.serviceaccount.{domain}",
            domain.control_plane_namespace()
        )
    });
    let metrics = AgentMetrics::new();
    let proxy_metrics = ProxyMetrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    if !args.agent_only {
        proxy_metrics.register(&mut registry);
    }
    let config = AgentConfig {
        identity: args.identity.clone(),
        service_addr: args.identity_addr.clone(),
        service_identity,
        trust_anchors: args.trust_anchors.clone(),
        token_file: args.token_file.clone(),
        insecure_plaintext: args.insecure_plaintext_identity,
        timeout: args.identity_timeout,
    };
    // The one real clock: the agent's refresh decisions and the proxy's
    // handshakes read the same `now`.
    let clock = SystemClock;
    let agent = Agent::new(config, clock, metrics).map_err(|e| e.to_string())?;
    let (tx, rx) = watch::channel(None);
    // In agent-only mode, ready means the files are written.
    let (written_tx, written_rx) = watch::channel(None);
    let ready = if args.agent_only {
        written_rx
    } else {
        rx.clone()
    };
    let endpoints = admin_endpoints(Arc::new(registry), ready);
    let (admin, server) =
        lanyard_runtime::admin::serve(args.admin_addr, endpoints, shutdown.clone())
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
    match args.out_dir.clone().filter(|_| args.agent_only) {
        Some(out_dir) => {
            // What a killed agent left half-written goes before the first write.
            for path in lanyard_files::volume::sweep(&out_dir) {
                tracing::info!(path = %path.display(), "removed a staged version left by an interrupted write");
            }
            tokio::select! {
                () = write_files(out_dir, rx, written_tx) => Ok(()),
                () = shutdown.wait() => Ok(()),
            }
        }
        None => proxy(args, rx, proxy_metrics, clock, shutdown).await,
    }
}

/// Proxy mode: inbound mTLS with policy, outbound mTLS routes, reloads of
/// the trust bundle and policy, and a graceful drain on shutdown.
async fn proxy(
    args: Args,
    credentials: watch::Receiver<Option<Arc<Credentials>>>,
    metrics: ProxyMetrics,
    clock: impl Clock + 'static,
    shutdown: Shutdown,
) -> Result<(), String> {
    let limits = Limits {
        max_connections: args.max_connections.max(1),
        handshake_timeout: args.handshake_timeout,
        idle_timeout: args.idle_timeout,
    };
    let mut cluster_networks = Vec::new();
    for n in &args.cluster_networks {
        cluster_networks.push(
            n.parse()
                .map_err(|_| format!("--cluster-networks: `{n}` is not a network"))?,
        );
    }
    let options = PolicyOptions {
        identity_domain: args.identity.domain().clone(),
        default_policy: args.default_policy,
        cluster_networks,
    };
    let mut policy_dir = args
        .policy_dir
        .as_ref()
        .map(|d| PolicyDir::new(d, options.clone()));
    let initial = match policy_dir.as_mut().map(PolicyDir::poll) {
        None | Some(PolicyReload::Unchanged) => Policy::empty(&options),
        Some(PolicyReload::Loaded(policy)) => policy,
        Some(PolicyReload::Refused(errors)) => {
            return Err(format!("the policy does not load:\n{errors}"));
        }
    };
    let policy = Arc::new(arc_swap::ArcSwap::from_pointee(initial));
    let bundle = Arc::new(
        TrustBundle::load(
            &args.trust_anchors,
            Arc::new(CurrentCert(credentials)),
            clock,
        )
        .map_err(|e| e.to_string())?,
    );
    let drain = Arc::new(Drain::default());
    let inbound = Arc::new(Inbound {
        app: args.app_addr,
        workload: Arc::new(Workload {
            namespace: args.namespace.clone(),
            labels: args.pod_labels.iter().cloned().collect(),
            named_ports: args.named_ports.iter().cloned().collect(),
            default_policy: None,
        }),
        policy: policy.clone(),
        bundle: bundle.clone(),
        metrics: metrics.clone(),
        drain: drain.clone(),
    });
    let listener = TcpListener::bind(args.inbound_addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.inbound_addr))?;
    eprintln!(
        "lanyard-proxy: inbound on {} -> {}",
        listener.local_addr().map_err(|e| e.to_string())?,
        args.app_addr
    );
    let listener = BoundedListener::new(
        listener,
        limits,
        metrics.inbound_listener().clone(),
        "inbound",
    );
    tokio::spawn(serve_inbound(listener, inbound, shutdown.clone()));
    for (listen, route) in args.outbound {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        eprintln!(
            "lanyard-proxy: outbound on {} -> {} as {}",
            listener.local_addr().map_err(|e| e.to_string())?,
            route.target,
            route.identity
        );
        let listener = BoundedListener::new(
            listener,
            limits,
            metrics.outbound_listener().clone(),
            "outbound",
        );
        tokio::spawn(serve_outbound(
            listener,
            route,
            bundle.clone(),
            metrics.clone(),
            drain.clone(),
            shutdown.clone(),
        ));
    }
    let reloads = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match bundle.reload() {
                Ok(true) => tracing::info!("trust bundle reloaded"),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "trust bundle refused; the previous one stays")
                }
            }
            if let Some(dir) = policy_dir.as_mut() {
                match dir.poll() {
                    PolicyReload::Unchanged => {}
                    PolicyReload::Loaded(new) => {
                        policy.store(Arc::new(new));
                        metrics.policy_reload(true);
                        tracing::info!("policy reloaded");
                    }
                    PolicyReload::Refused(errors) => {
                        metrics.policy_reload(false);
                        tracing::warn!(%errors, "policy refused; the last good policy stays");
                    }
                }
            }
        }
    });
    shutdown.wait().await;
    eprintln!("lanyard-proxy: draining {} connections", drain.active());
    reloads.abort();
    drain.wait(Duration::from_secs(30)).await;
    Ok(())
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
