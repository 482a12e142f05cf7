//! `lanyard anchor rotate` and `lanyard anchor status`: the trust anchor's
//! rotation with overlap, in the local mode's state directory.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use lanyard_crds::time::Clock;
use lanyard_rotator::local::trust::{self, RotateRequestError};

use crate::ca::CliError;

/// `lanyard anchor ...`.
#[derive(Debug, Subcommand)]
pub enum AnchorCommand {
    /// Start a rotation of the trust anchor with overlap: a new anchor is
    /// trusted beside the old, the issuer switches, and the old anchor is
    /// removed once nothing chains to it. Refused while one is under way.
    Rotate(StateDirArgs),
    /// Show the rotation's phase, what it waits for, and when the next
    /// step is due.
    Status(StateDirArgs),
}

/// Where the state lives.
#[derive(Debug, Args)]
pub struct StateDirArgs {
    /// The state directory of `lanyard up`.
    #[arg(long, env = "LANYARD_STATE_DIR")]
    state_dir: PathBuf,
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (t - now).num_seconds();
    match seconds {
        s if s <= 0 => "now".into(),
        s if s < 120 => format!("in {s}s"),
        s if s < 7_200 => format!("in {}m", s / 60),
        s if s < 172_800 => format!("in {}h", s / 3_600),
        s => format!("in {}d", s / 86_400),
    }
}

/// Runs an `anchor` command.
pub fn run(command: AnchorCommand, clock: &impl Clock) -> Result<ExitCode, CliError> {
    match command {
        AnchorCommand::Rotate(args) => rotate(&args, clock.now()),
        AnchorCommand::Status(args) => status(&args, clock.now()),
    }
}

fn require_state_dir(args: &StateDirArgs) -> Result<(), CliError> {
    if args.state_dir.join("manifests").is_dir() {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "{} is not a state directory of `lanyard up` (no manifests/ in it)",
            args.state_dir.display()
        )))
    }
}

fn rotate(args: &StateDirArgs, now: DateTime<Utc>) -> Result<ExitCode, CliError> {
    require_state_dir(args)?;
    match trust::request_rotation(&args.state_dir, now) {
        Ok(_) => {
            println!(
                "trust anchor rotation requested; `lanyard up` on {} starts it (Prepared) at once. \
                 Follow it with `lanyard anchor status --state-dir {}`",
                args.state_dir.display(),
                args.state_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(
            error @ (RotateRequestError::InProgress(_) | RotateRequestError::AlreadyRequested(_)),
        ) => {
            eprintln!("lanyard: refused: {error}");
            Ok(ExitCode::FAILURE)
        }
        Err(error) => Err(CliError::Usage(error.to_string())),
    }
}

fn status(args: &StateDirArgs, now: DateTime<Utc>) -> Result<ExitCode, CliError> {
    require_state_dir(args)?;
    let record = trust::read_record(&args.state_dir).map_err(|e| CliError::Usage(e.to_string()))?;
    let request =
        trust::read_request(&args.state_dir).map_err(|e| CliError::Usage(e.to_string()))?;
    let Some(record) = record else {
        println!(
            "phase:        Stable (no rotation recorded yet; `lanyard up` records one on its first pass)"
        );
        if let Some(request) = request {
            println!(
                "requested:    {} (starts when `lanyard up` runs)",
                time(request.requested_at)
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    let rotation = &record.rotation;
    println!("anchor:       {}", record.anchor);
    println!(
        "phase:        {} (since {})",
        rotation.phase,
        time(rotation.since)
    );
    match (&record.current_subject, record.current_not_after) {
        (Some(subject), Some(not_after)) => println!(
            "current:      {subject}, sha256 {}, until {}",
            rotation.current,
            time(not_after)
        ),
        _ => println!("current:      sha256 {}", rotation.current),
    }
    if let Some(next) = &rotation.next {
        println!("new anchor:   sha256 {next}");
    }
    if let Some(switched) = rotation.switched_at {
        println!("switched at:  {}", time(switched));
    }
    if let Some(waiting) = &record.waiting_for {
        println!("waiting for:  {waiting}");
    }
    match record.next_step_due {
        Some(due) => println!("next step:    {} ({})", time(due), relative(due, now)),
        None if record.waiting_for.is_some() => {
            println!("next step:    when that happens (looked at every second)")
        }
        None => {}
    }
    if let Some(request) = request {
        println!(
            "requested:    {} (not started yet)",
            time(request.requested_at)
        );
    }
    println!("completed:    {} rotation(s)", rotation.completed);
    println!("recorded:     {}", time(record.updated));
    Ok(ExitCode::SUCCESS)
}
