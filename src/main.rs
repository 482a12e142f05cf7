//! `lanyard`: the command line of the Lanyard certificate lifecycle manager.

#![forbid(unsafe_code)]

mod anchor;
mod ca;
mod check;
mod controller;
mod identity;
mod install;
mod limits;
mod local;
mod policy;
mod token;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use lanyard_runtime::DEFAULT_LOG_FILTER;
use tracing_subscriber::EnvFilter;

/// A server allocator, as in `lanyard-proxy`: the identity service and the
/// local controller's passes allocate and free many small buffers (YAML and
/// JSON values, DER, frames) from several threads at once.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Certificate lifecycle manager for Kubernetes service meshes.
#[derive(Debug, Parser)]
#[command(
    name = "lanyard",
    version,
    about,
    long_about = None,
    after_help = "Logging: lines go to stderr. --log-level, else the LANYARD_LOG environment \
                  variable, sets the filter (tracing's EnvFilter syntax, e.g. `debug` or \
                  `warn,lanyard_rotator=debug`); the default logs Lanyard's lifecycle events \
                  at info and other crates' warnings."
)]
struct Cli {
    /// The log filter, e.g. `debug` or `warn,lanyard_rotator=debug`;
    /// overrides LANYARD_LOG. Default: Lanyard's lifecycle events at info,
    /// other crates' warnings.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    /// `text` (one human-readable line per event) or `json` (one JSON
    /// object per line, for log collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make, import, sign with and explain the mesh's certificate authority.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Run the controller on this machine, no cluster: issue and renew every
    /// Certificate in the state directory, and serve metrics.
    Up(local::UpArgs),
    /// Validate manifests and add them to the local state directory.
    Apply(local::ApplyArgs),
    /// List objects in the local state directory, like kubectl.
    Get(local::GetArgs),
    /// Run the controller against a Kubernetes API server (in cluster, or
    /// the current KUBECONFIG context).
    Controller(controller::ControllerArgs),
    /// Run the identity service in a cluster: Linkerd's Certify API over
    /// TLS, tokens checked with TokenReview.
    Identity(identity::IdentityArgs),
    /// Print the CustomResourceDefinitions, generated from the Rust types.
    Crds,
    /// Print the cluster manifests for `kubectl apply -f -` (the Helm
    /// chart's objects at the same values), as `linkerd install` does.
    Install(install::InstallArgs),
    /// Check an install, as `linkerd check` does (with --state-dir, the
    /// state directory of `lanyard up`); exits 1 when a check fails.
    Check(check::CheckArgs),
    /// Check Linkerd policy manifests offline, and test what the proxy
    /// would decide.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Join tokens for agents in local mode.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Rotate the trust anchor with overlap, and follow the rotation.
    #[command(subcommand)]
    Anchor(anchor::AnchorCommand),
}

/// The async runtime for the long-running commands (`up`, `controller`).
fn runtime() -> Result<tokio::runtime::Runtime, ca::CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| ca::CliError::Read {
            path: "tokio runtime".into(),
            source,
        })
}

/// Serves the admin endpoints (`/metrics`, `/ready`, `/live`) on `addr`
/// until `shutdown`; returns the bound address and the server's task.
async fn serve_admin(
    addr: std::net::SocketAddr,
    endpoints: lanyard_runtime::admin::Endpoints,
    shutdown: &lanyard_runtime::Shutdown,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), ca::CliError> {
    let (bound, server) = lanyard_runtime::admin::serve(addr, endpoints, shutdown.clone())
        .await
        .map_err(|source| ca::CliError::Read {
            path: format!("metrics listener {addr}").into(),
            source,
        })?;
    Ok((bound, tokio::spawn(server)))
}

/// The log filter: `--log-level`, else `LANYARD_LOG`, else the default.
fn log_filter(flag: Option<&str>) -> Result<EnvFilter, String> {
    let (text, from) = match (flag, std::env::var("LANYARD_LOG")) {
        (Some(flag), _) => (flag.to_string(), "--log-level"),
        (None, Ok(env)) if !env.trim().is_empty() => (env, "LANYARD_LOG"),
        _ => (DEFAULT_LOG_FILTER.to_string(), "the default log filter"),
    };
    EnvFilter::try_new(&text).map_err(|e| format!("{from} `{text}`: {e}"))
}

/// Sets up logging to stderr; colour only when stderr is a terminal, so
/// files and log collectors get plain text.
fn init_logging(cli: &Cli) -> Result<(), String> {
    let filter = log_filter(cli.log_level.as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = init_logging(&cli) {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    let clock = lanyard_crds::time::SystemClock;
    let result = match cli.command {
        Command::Ca(command) => ca::run(command, &clock),
        Command::Up(args) => local::up(args),
        Command::Apply(args) => local::apply(args),
        Command::Get(args) => local::get(args),
        Command::Controller(args) => controller::controller(args),
        Command::Identity(args) => identity::identity(args),
        Command::Token(command) => token::run(command, &clock),
        Command::Anchor(command) => anchor::run(command, &clock),
        Command::Policy(command) => policy::run(command),
        Command::Install(args) => install::install(args, &clock),
        Command::Check(args) => check::check(args, &clock),
        Command::Crds => {
            print!("{}", lanyard_crds::api::custom_resource_definitions_yaml());
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
