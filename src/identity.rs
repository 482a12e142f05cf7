//! `lanyard identity`: the identity service in a cluster. Linkerd's
//! `Certify` API over TLS, as `lanyard up` serves it, with two shells
//! swapped in: tokens are checked with the API server's TokenReview, and
//! the issuer comes from its Secret (watched through the API, or read from
//! a mounted Secret volume).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use clap::Args;
use lanyard_crds::identity::{Identity, IdentityDomain, TrustDomain};
use lanyard_crds::time::SystemClock;
use lanyard_identity::kube::issuer_secret::{self, IssuerSecret, watch_issuer_secret};
use lanyard_identity::kube::token_review::{self, TokenReviewAuthenticator};
use lanyard_identity::metrics::IdentityMetrics;
use lanyard_identity::reload::IssuerReloader;
use lanyard_identity::serve::{ServeOptions, serve, watch_files};
use lanyard_identity::service::RateLimit;

use crate::ca::CliError;

/// The service account the identity service runs as, which names its own
/// identity, as in Linkerd.
const SERVICE_ACCOUNT: &str = "linkerd-identity";

/// `lanyard identity`.
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// Where to serve the identity service (Linkerd's `Certify` API, TLS).
    #[arg(long, default_value = "0.0.0.0:8080")]
    addr: SocketAddr,
    /// The control plane's namespace: the issuer Secret lives here, and it
    /// names the identity domain `identity.<namespace>.<trust-domain>`.
    #[arg(long, env = "POD_NAMESPACE", default_value = issuer_secret::DEFAULT_NAMESPACE)]
    namespace: String,
    /// The Secret holding the identity issuer (`tls.crt`, `tls.key`,
    /// `ca.crt`), watched through the API server.
    #[arg(long, default_value = issuer_secret::DEFAULT_NAME)]
    issuer_secret: String,
    /// Read the issuer from this directory (the issuer Secret mounted as a
    /// volume) instead of watching it through the API server.
    #[arg(long, conflicts_with = "issuer_secret")]
    issuer_dir: Option<PathBuf>,
    /// The mesh's trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The audience agents' service account tokens must be issued for.
    #[arg(long, default_value = token_review::DEFAULT_AUDIENCE)]
    audience: String,
    /// The lifetime of the workload certificates it issues (Linkerd's
    /// `identity.issuer.issuanceLifetime`).
    #[arg(long, default_value = "24h", value_parser = crate::local::leaf_lifetime)]
    issuance_lifetime: lanyard_crds::duration::GoDuration,
    /// Where to serve Prometheus metrics.
    #[arg(long, default_value = "0.0.0.0:9990")]
    metrics_addr: SocketAddr,
    /// Serve without TLS: tokens cross the wire in the clear. Only for
    /// debugging.
    #[arg(long)]
    insecure_plaintext: bool,
    #[command(flatten)]
    limits: crate::limits::LimitsArgs,
}

/// Runs the identity service until SIGTERM or Ctrl-C.
pub fn identity(args: IdentityArgs) -> Result<ExitCode, CliError> {
    let trust_domain: TrustDomain = args.trust_domain.parse()?;
    let domain = IdentityDomain::new(&args.namespace, trust_domain)?;
    let service_identity = Identity::new(SERVICE_ACCOUNT, &args.namespace, domain)?;
    if let Err(error) = lanyard_runtime::raise_fd_limit() {
        tracing::warn!(%error, "cannot raise the open-file limit");
    }
    let runtime = crate::runtime()?;
    runtime.block_on(async move {
        let shutdown =
            lanyard_runtime::Shutdown::on_signals().map_err(|source| CliError::Read {
                path: "signal handlers".into(),
                source,
            })?;
        let client = kube::Client::try_default()
            .await
            .map_err(|e| CliError::Usage(format!("configuring the Kubernetes client: {e}")))?;
        let identity_metrics = IdentityMetrics::new();
        let mut registry = prometheus_client::registry::Registry::default();
        identity_metrics.register(&mut registry);
        let registry = Arc::new(registry);
        let endpoints = lanyard_runtime::admin::Endpoints::registry(registry);
        let (bound, metrics_server) =
            crate::serve_admin(args.metrics_addr, endpoints, &shutdown).await?;

        let slot = Arc::new(ArcSwapOption::empty());
        let (watch, source) = match args.issuer_dir {
            Some(dir) => {
                let source = dir.display().to_string();
                let reloader =
                    IssuerReloader::new(dir, slot.clone()).with_metrics(identity_metrics.clone());
                (tokio::spawn(watch_files(reloader, SystemClock)), source)
            }
            None => {
                let secret = IssuerSecret::new(&args.namespace, &args.issuer_secret);
                let source = secret.source();
                let reloader = IssuerReloader::for_source(source.clone(), slot.clone())
                    .with_metrics(identity_metrics.clone());
                let watch = watch_issuer_secret(client.clone(), secret, reloader, SystemClock);
                (tokio::spawn(watch), source)
            }
        };

        let authenticator = TokenReviewAuthenticator::new(client).with_audience(&args.audience);
        let scheme = if args.insecure_plaintext {
            "http"
        } else {
            "https"
        };
        let name = service_identity.to_string();
        let audience = args.audience.clone();
        let result = serve(
            ServeOptions {
                addr: args.addr,
                issuer: slot,
                service_identity,
                metrics: identity_metrics,
                rate_limit: RateLimit::default(),
                insecure_plaintext: args.insecure_plaintext,
                limits: args.limits.limits(),
                leaf_lifetime: args.issuance_lifetime.to_chrono(),
            },
            authenticator,
            SystemClock,
            move |addr| {
                eprintln!(
                    "lanyard: identity service on {scheme}://{addr} as {name}; issuer from {source}; tokens for `{audience}` checked with TokenReview; metrics on http://{bound}/metrics"
                );
            },
            shutdown,
        )
        .await;
        watch.abort();
        metrics_server.abort();
        result.map_err(|e| CliError::Usage(e.to_string()))
    })?;
    Ok(ExitCode::SUCCESS)
}
