//! `lanyard anchor rotate` and `lanyard anchor status`: the trust anchor's
//! rotation with overlap, in the local mode's state directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use lanyard_crds::time::Clock;
use lanyard_rotator::anchor::RotationRecord;
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

/// Where the anchor lives: a state directory, or a cluster.
#[derive(Debug, Args)]
pub struct StateDirArgs {
    /// The state directory of `lanyard up`.
    #[arg(
        long,
        env = "LANYARD_STATE_DIR",
        required_unless_present = "cluster_issuer",
        conflicts_with = "cluster_issuer"
    )]
    state_dir: Option<PathBuf>,
    /// In a cluster (in cluster, or the current KUBECONFIG context): the
    /// CA ClusterIssuer whose anchor rotates. Its anchor rotates where a
    /// TrustBundle names it as a source.
    #[arg(long)]
    cluster_issuer: Option<String>,
    /// Where ClusterIssuers' CA Secrets live (the controller's cluster
    /// resource namespace).
    #[arg(long, default_value = lanyard_rotator::kube::DEFAULT_CLUSTER_RESOURCE_NAMESPACE)]
    cluster_resource_namespace: String,
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
    let (args, rotate_it) = match &command {
        AnchorCommand::Rotate(args) => (args, true),
        AnchorCommand::Status(args) => (args, false),
    };
    if let Some(issuer) = &args.cluster_issuer {
        return crate::runtime()?.block_on(cluster::run(
            issuer,
            &args.cluster_resource_namespace,
            rotate_it,
            clock.now(),
        ));
    }
    let dir = args
        .state_dir
        .as_deref()
        .expect("clap requires one of the two");
    require_state_dir(dir)?;
    if rotate_it {
        rotate(dir, clock.now())
    } else {
        status(dir, clock.now())
    }
}

fn require_state_dir(dir: &Path) -> Result<(), CliError> {
    if dir.join("manifests").is_dir() {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "{} is not a state directory of `lanyard up` (no manifests/ in it)",
            dir.display()
        )))
    }
}

fn rotate(dir: &Path, now: DateTime<Utc>) -> Result<ExitCode, CliError> {
    match trust::request_rotation(dir, now) {
        Ok(_) => {
            println!(
                "trust anchor rotation requested; `lanyard up` on {} starts it (Prepared) at once. \
                 Follow it with `lanyard anchor status --state-dir {}`",
                dir.display(),
                dir.display()
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

fn status(dir: &Path, now: DateTime<Utc>) -> Result<ExitCode, CliError> {
    let record = trust::read_record(dir).map_err(|e| CliError::Usage(e.to_string()))?;
    let request = trust::read_request(dir)
        .map_err(|e| CliError::Usage(e.to_string()))?
        .map(|r| r.requested_at);
    print_status(record.as_ref(), request, now);
    Ok(ExitCode::SUCCESS)
}

/// Prints a rotation record as `lanyard anchor status` does.
fn print_status(
    record: Option<&RotationRecord>,
    request: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) {
    let Some(record) = record else {
        println!(
            "phase:        Stable (no rotation recorded yet; the controller records one at its first look)"
        );
        if let Some(request) = request {
            println!("requested:    {} (not started yet)", time(request));
        }
        return;
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
        None if record.waiting_for.is_some() => println!("next step:    when that happens"),
        None => {}
    }
    if let Some(request) = request {
        println!("requested:    {} (not started yet)", time(request));
    }
    println!("completed:    {} rotation(s)", rotation.completed);
    println!("recorded:     {}", time(record.updated));
}

/// The same commands against a cluster: the rotation record and the
/// request are annotations on the ClusterIssuer's CA Secret.
mod cluster {
    use std::process::ExitCode;

    use chrono::{DateTime, SecondsFormat, Utc};
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, Patch, PatchParams};
    use lanyard_crds::api::ClusterIssuer;
    use lanyard_rotator::kube::anchor_rotation::{ROTATE_ANNOTATION, record_of};
    use lanyard_trust_bundle::rotation::may_rotate;

    use crate::ca::CliError;

    fn api_error(what: String) -> impl Fn(kube::Error) -> CliError {
        move |e| CliError::Usage(format!("{what}: {e}"))
    }

    pub(super) async fn run(
        issuer: &str,
        namespace: &str,
        rotate: bool,
        now: DateTime<Utc>,
    ) -> Result<ExitCode, CliError> {
        let client = lanyard_rotator::kube::infer_client()
            .await
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let issuers: Api<ClusterIssuer> = Api::all(client.clone());
        let found = issuers
            .get_opt(issuer)
            .await
            .map_err(api_error(format!("reading ClusterIssuer `{issuer}`")))?
            .ok_or_else(|| CliError::Usage(format!("ClusterIssuer `{issuer}` does not exist")))?;
        let secret_name = found
            .spec
            .config
            .ca
            .as_ref()
            .map(|ca| ca.secret_name.clone())
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "ClusterIssuer `{issuer}` is not a CA issuer; it has no anchor to rotate"
                ))
            })?;
        let secrets: Api<Secret> = Api::namespaced(client, namespace);
        let secret = secrets
            .get_opt(&secret_name)
            .await
            .map_err(api_error(format!(
                "reading Secret `{namespace}/{secret_name}`"
            )))?
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "the CA Secret `{namespace}/{secret_name}` of ClusterIssuer `{issuer}` does not exist \
                     (is --cluster-resource-namespace the controller's?)"
                ))
            })?;
        let record = record_of(&secret);
        let requested = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ROTATE_ANNOTATION))
            .and_then(|t| t.parse::<DateTime<Utc>>().ok());
        if !rotate {
            super::print_status(record.as_ref(), requested, now);
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(record) = &record
            && let Err(refused) = may_rotate(&record.rotation)
        {
            eprintln!("lanyard: refused: {refused}");
            return Ok(ExitCode::FAILURE);
        }
        if let Some(at) = requested {
            eprintln!(
                "lanyard: refused: a rotation was already requested at {} and has not started yet; \
                 is `lanyard controller` running, and does a TrustBundle name ClusterIssuer `{issuer}`?",
                at.to_rfc3339_opts(SecondsFormat::Secs, true)
            );
            return Ok(ExitCode::FAILURE);
        }
        // Guarded by the resourceVersion read: a rotation that started
        // meanwhile is not asked for twice.
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": secret.metadata.resource_version,
                "annotations": { ROTATE_ANNOTATION: now.to_rfc3339_opts(SecondsFormat::Secs, true) },
            }
        });
        secrets
            .patch(&secret_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_error(format!(
                "annotating Secret `{namespace}/{secret_name}`"
            )))?;
        println!(
            "trust anchor rotation of ClusterIssuer `{issuer}` requested (annotation {ROTATE_ANNOTATION} \
             on Secret {namespace}/{secret_name}); the controller starts it at its next look. Follow it \
             with `lanyard anchor status --cluster-issuer {issuer}`"
        );
        Ok(ExitCode::SUCCESS)
    }
}
