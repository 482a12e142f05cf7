//! `lanyard`: the command line of the Lanyard certificate lifecycle manager.

#![forbid(unsafe_code)]

mod ca;

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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
