//! `lanyard controller`: the same core against a Kubernetes API server (in
//! cluster, or the current `KUBECONFIG` context).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use lanyard_crds::time::SystemClock;
use lanyard_rotator::kube::lease::default_identity;
use lanyard_rotator::kube::{Context, DEFAULT_CONCURRENCY, LeaderElection, infer_client, run};
use lanyard_rotator::metrics::Metrics;

use crate::ca::CliError;

/// `lanyard controller`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// The controller's own namespace: its Lease lives here.
    #[arg(long, env = "POD_NAMESPACE", default_value = "lanyard")]
    namespace: String,
    /// Where ClusterIssuers' CA Secrets live (default: the controller's
    /// namespace).
    #[arg(long)]
    cluster_resource_namespace: Option<String>,
    /// Where to serve Prometheus metrics.
    #[arg(long, default_value = "0.0.0.0:9402")]
    metrics_addr: SocketAddr,
    /// Run without a Lease: only for a single replica.
    #[arg(long)]
    no_leader_elect: bool,
    /// Do not run the TrustBundle controller: for a cluster without the
    /// TrustBundle CRD, or where trust-manager distributes the bundles.
    #[arg(long)]
    no_trust_bundles: bool,
    /// The identity service's workload certificate lifetime (`lanyard
    /// identity`'s): an anchor rotation keeps the old anchor this long
    /// after the issuer switched.
    #[arg(long, default_value = "24h", value_parser = crate::local::leaf_lifetime)]
    issuance_lifetime: lanyard_crds::duration::GoDuration,
    /// How many Certificates (and, apart, issuers) are reconciled at once;
    /// the rest wait in the queue.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..))]
    concurrent_workers: u16,
}

/// Runs the Kubernetes controller until SIGTERM or Ctrl-C.
pub fn controller(args: ControllerArgs) -> Result<ExitCode, CliError> {
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
        let client = infer_client()
            .await
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let metrics = Arc::new(Metrics::new());
        let endpoints = lanyard_runtime::admin::Endpoints::new({
            let metrics = metrics.clone();
            move || metrics.encode()
        });
        let (bound, server) = crate::serve_admin(args.metrics_addr, endpoints, &shutdown).await?;
        eprintln!("lanyard: controller starting; metrics on http://{bound}/metrics");
        let ctx = Context::new(client, SystemClock, metrics)
            .with_cluster_resource_namespace(
                args.cluster_resource_namespace
                    .unwrap_or_else(|| args.namespace.clone()),
            )
            .with_concurrency(args.concurrent_workers)
            .with_trust_bundles(!args.no_trust_bundles)
            .with_rotation_timing(lanyard_rotator::kube::anchor_rotation::RotationTiming {
                leaf_lifetime: args.issuance_lifetime.to_chrono(),
                ..Default::default()
            });
        let election = (!args.no_leader_elect)
            .then(|| LeaderElection::new(&args.namespace, default_identity()));
        let result = run(Arc::new(ctx), election, shutdown.wait_owned()).await;
        server.abort();
        result.map_err(|e| CliError::Usage(e.to_string()))
    })?;
    Ok(ExitCode::SUCCESS)
}
