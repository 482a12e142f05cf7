//! `lanyard token create`: a join token for an agent in local mode.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use lanyard_crds::duration::GoDuration;
use lanyard_crds::time::Clock;
use lanyard_identity::token::TokenKey;

use crate::ca::CliError;

/// Where the token key lives in a state directory.
pub fn token_key_path(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("identity").join("token.key")
}

/// `lanyard token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a token that proves NAMESPACE/SERVICE-ACCOUNT to the identity
    /// service of `lanyard up --state-dir DIR`.
    Create(CreateArgs),
}

/// `lanyard token create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The state directory of `lanyard up`.
    #[arg(long, env = "LANYARD_STATE_DIR")]
    state_dir: PathBuf,
    /// The workload's namespace.
    #[arg(long)]
    namespace: String,
    /// The workload's service account.
    #[arg(long)]
    service_account: String,
    /// How long the token is accepted (Go syntax, at most 8784h).
    #[arg(long, default_value = "1h")]
    ttl: GoDuration,
}

/// Runs a token command.
pub fn run(command: TokenCommand, clock: &dyn Clock) -> Result<ExitCode, CliError> {
    let TokenCommand::Create(args) = command;
    let key = TokenKey::load_or_create(&token_key_path(&args.state_dir))?;
    let token = key
        .create(
            &args.namespace,
            &args.service_account,
            args.ttl.to_chrono(),
            clock.now(),
        )
        .map_err(|e| CliError::Usage(e.to_string()))?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
