//! `lanyard policy`: check Linkerd policy manifests offline, and ask what
//! the proxy would decide for a given client, so policy can be tested in
//! CI before it reaches a cluster.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use lanyard_policy::{Client, HttpRequest, Manifests, Policy, PolicyOptions, Verdict};

use crate::ca::CliError;

/// `lanyard policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check manifests: kinds, versions, fields, identities, and that every
    /// reference points at an object in the given files.
    Validate(ValidateArgs),
    /// Print whether a client would be allowed on a Server, and which
    /// policy decided it.
    Test(TestArgs),
}

/// Where the manifests are.
#[derive(Debug, Args)]
pub struct Files {
    /// Manifest files (YAML, several documents each) or directories of
    /// them; `-` reads stdin. Kinds other than Linkerd's policy kinds are
    /// skipped.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// The identity domain ServiceAccount and Namespace references name.
    #[arg(long, default_value = "identity.linkerd.cluster.local")]
    identity_domain: String,
}

/// `lanyard policy validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    files: Files,
}

/// What `--expect` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Expect {
    Allow,
    Deny,
}

/// `lanyard policy test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    #[command(flatten)]
    files: Files,
    /// The Server's name.
    #[arg(long)]
    server: String,
    /// The Server's namespace.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// The client's identity (from its certificate); omit for a client
    /// without mTLS.
    #[arg(long)]
    identity: Option<String>,
    /// The client's address, for NetworkAuthentication and `cluster-*`
    /// policies.
    #[arg(long, default_value = "10.0.0.1")]
    client_ip: IpAddr,
    /// The request path, for HTTPRoutes.
    #[arg(long)]
    path: Option<String>,
    /// The request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Exit 1 unless the decision is this.
    #[arg(long, value_enum)]
    expect: Option<Expect>,
}

/// Runs a policy command.
pub fn run(command: PolicyCommand) -> Result<ExitCode, CliError> {
    match command {
        PolicyCommand::Validate(args) => {
            load(&args.files)?;
            println!(
                "{} valid",
                args.files
                    .files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Test(args) => test(args),
    }
}

fn load(files: &Files) -> Result<Policy, CliError> {
    let options = PolicyOptions {
        identity_domain: files
            .identity_domain
            .parse()
            .map_err(|e| CliError::Usage(format!("--identity-domain: {e}")))?,
        ..PolicyOptions::default()
    };
    let mut manifests = Manifests::new();
    for file in &files.files {
        if file.is_dir() {
            manifests.add_dir(file).map_err(|source| CliError::Read {
                path: file.clone(),
                source,
            })?;
            continue;
        }
        let text = if file.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(file)
        }
        .map_err(|source| CliError::Read {
            path: file.clone(),
            source,
        })?;
        manifests.add_yaml(file, &text);
    }
    manifests
        .build(&options)
        .map_err(|errors| CliError::Usage(errors.to_string()))
}

fn test(args: TestArgs) -> Result<ExitCode, CliError> {
    let policy = load(&args.files)?;
    if let Some(id) = &args.identity {
        id.parse::<lanyard_crds::identity::Identity>()
            .map_err(|e| CliError::Usage(format!("--identity `{id}`: {e}")))?;
    }
    let client = Client {
        identity: args.identity.clone(),
        ip: args.client_ip,
    };
    let request = args.path.as_deref().map(|path| HttpRequest {
        path,
        method: &args.method,
    });
    let decision = policy
        .authorize_server(&args.namespace, &args.server, &client, request.as_ref())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "no Server `{}/{}` in the given files",
                args.namespace, args.server
            ))
        })?;
    let who = args
        .identity
        .as_deref()
        .unwrap_or("an unauthenticated client");
    let route = decision
        .route
        .as_deref()
        .map(|r| format!(", route `{r}`"))
        .unwrap_or_default();
    let verdict = match decision.verdict {
        Verdict::Allow if decision.audit => "allow (audit: deny would refuse)",
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::NoRoute => "deny (no HTTPRoute matches: 404)",
    };
    let by = match decision.authz.strip_prefix("default:") {
        Some(default) => format!(
            "no AuthorizationPolicy matched; the Server's access policy `{default}` decided"
        ),
        None if decision.verdict == Verdict::NoRoute => "the Server's routes".to_string(),
        None => format!("allowed by AuthorizationPolicy `{}`", decision.authz),
    };
    println!(
        "{verdict}: {who} on Server {}/{}{route}: {by}",
        args.namespace, args.server
    );
    let got = if decision.verdict == Verdict::Allow {
        Expect::Allow
    } else {
        Expect::Deny
    };
    match args.expect {
        Some(expected) if expected != got => {
            // The decision line above is what happened; this says it is a
            // failed expectation, not the command's own error.
            eprintln!("error: expected {}, got {}", expected.name(), got.name());
            Ok(ExitCode::FAILURE)
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

impl Expect {
    fn name(self) -> &'static str {
        match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
        }
    }
}
