//! `lanyard install`: the cluster manifests, for `kubectl apply -f -`, as
//! `linkerd install` prints them. The same objects as the Helm chart
//! `charts/lanyard` at the same values: both come from `lanyard-chart`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use lanyard_chart::values;
use lanyard_crds::time::Clock;

use crate::ca::CliError;

/// `lanyard install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Print only the CustomResourceDefinitions (apply them first, as
    /// with `linkerd install --crds`).
    #[arg(long)]
    crds: bool,
    /// The control-plane namespace (the Helm release's namespace).
    #[arg(long, short = 'n', default_value = lanyard_chart::DEFAULT_NAMESPACE)]
    namespace: String,
    /// A values file (YAML), as `helm install -f`; later files win.
    #[arg(long = "values", short = 'f', value_name = "FILE")]
    values_files: Vec<PathBuf>,
    /// Set a value, as `helm install --set` (e.g. `controller.replicas=3`);
    /// the chart's values.yaml lists them.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Bring your own trust anchors (PEM): `identity.trustAnchorsPEM`.
    #[arg(long, value_name = "FILE", requires_all = ["identity_issuer_certificate_file", "identity_issuer_key_file"])]
    identity_trust_anchors_file: Option<PathBuf>,
    /// Bring your own issuer certificate (PEM): `identity.issuer.tls.crtPEM`.
    #[arg(long, value_name = "FILE", requires_all = ["identity_trust_anchors_file", "identity_issuer_key_file"])]
    identity_issuer_certificate_file: Option<PathBuf>,
    /// Bring your own issuer key (PEM): `identity.issuer.tls.keyPEM`.
    #[arg(long, value_name = "FILE", requires_all = ["identity_trust_anchors_file", "identity_issuer_certificate_file"])]
    identity_issuer_key_file: Option<PathBuf>,
    /// The mesh's trust domain: `identityTrustDomain`.
    #[arg(long, value_name = "DOMAIN")]
    identity_trust_domain: Option<String>,
    /// The workload certificates' lifetime:
    /// `identity.issuer.issuanceLifetime`.
    #[arg(long, value_name = "DURATION")]
    identity_issuance_lifetime: Option<String>,
}

/// Prints the manifests to stdout.
pub fn install(args: InstallArgs, clock: &dyn Clock) -> Result<ExitCode, CliError> {
    if args.crds {
        print!("{}", lanyard_chart::crds_yaml());
        return Ok(ExitCode::SUCCESS);
    }
    let mut merged = lanyard_chart::Values::default_json();
    for path in &args.values_files {
        let text = read_text(path)?;
        let overlay: serde_json::Value = serde_saphyr::from_str(&text)
            .map_err(|e| CliError::Usage(format!("values file {}: {e}", path.display())))?;
        values::merge(&mut merged, overlay);
    }
    let usage = |e: values::ValuesError| CliError::Usage(e.to_string());
    for assignment in &args.set {
        values::set(&mut merged, assignment).map_err(usage)?;
    }
    for (key, file) in [
        (
            "identity.trustAnchorsPEM",
            &args.identity_trust_anchors_file,
        ),
        (
            "identity.issuer.tls.crtPEM",
            &args.identity_issuer_certificate_file,
        ),
        ("identity.issuer.tls.keyPEM", &args.identity_issuer_key_file),
    ] {
        if let Some(path) = file {
            values::set_string(&mut merged, key, read_text(path)?).map_err(usage)?;
        }
    }
    if let Some(domain) = &args.identity_trust_domain {
        values::set_string(&mut merged, "identityTrustDomain", domain.clone()).map_err(usage)?;
    }
    if let Some(lifetime) = &args.identity_issuance_lifetime {
        values::set_string(
            &mut merged,
            "identity.issuer.issuanceLifetime",
            lifetime.clone(),
        )
        .map_err(usage)?;
    }
    let objects = lanyard_chart::render(&merged, &args.namespace, clock.now())
        .map_err(|e| CliError::Usage(e.to_string()))?;
    print!(
        "# Lanyard {}: `lanyard install --crds | kubectl apply -f -` first, then this.\n---\n{}",
        env!("CARGO_PKG_VERSION"),
        lanyard_chart::to_yaml_stream(&objects)
    );
    Ok(ExitCode::SUCCESS)
}

fn read_text(path: &std::path::Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_path_buf(),
        source,
    })
}
