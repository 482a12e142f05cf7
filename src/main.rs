//! `lanyard`: the command line of the Lanyard certificate lifecycle manager.

#![forbid(unsafe_code)]

mod ca;
mod controller;
mod identity;
mod limits;
mod local;
mod policy;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Certificate lifecycle manager for Kubernetes service meshes.
#[derive(Debug, Parser)]
#[command(name = "lanyard", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Check Linkerd policy manifests offline, and test what the proxy
    /// would decide.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Join tokens for agents in local mode.
    #[command(subcommand)]
    Token(token::TokenCommand),
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LANYARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let clock = lanyard_crds::time::SystemClock;
    let result = match cli.command {
        Command::Ca(command) => ca::run(command, &clock),
        Command::Up(args) => local::up(args),
        Command::Apply(args) => local::apply(args),
        Command::Get(args) => local::get(args),
        Command::Controller(args) => controller::controller(args),
        Command::Identity(args) => identity::identity(args),
        Command::Token(command) => token::run(command, &clock),
        Command::Policy(command) => policy::run(command),
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
