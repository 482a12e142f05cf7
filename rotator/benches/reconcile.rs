//! Reconciling 10,000 Certificates in the local shell: a cold pass (every
//! one needs issuing) and a steady pass (none does), beside the CA core's
//! raw issuance rate (key generation + signing, nothing else) measured in
//! the same run, so the ratio shows what the store and planner cost.
//!
//! Two ratios are printed. The cold pass issues on every core (rayon), so
//! it is divided both by the raw rate of one thread (the figure issue 17
//! sets its goal on) and by the raw rate on as many threads as the pass
//! has (the share of the machine's signing capacity the pass reaches).
//!
//! `cargo bench -p lanyard-rotator` prints the figures. Without `--bench`
//! (as `cargo test --benches` runs it) it does a quick smoke run.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use lanyard_crds::api::IssuerKind;
use lanyard_crds::identity::IdentityDomain;
use lanyard_crds::time::{Clock, SystemClock};
use lanyard_crds::usage::KeyUsage;
use lanyard_issuer::{CertificateTemplate, KeyAlgorithm, SigningKey};
use lanyard_rotator::issuing::{IssuerMaterial, load_issuer};
use lanyard_rotator::local::manifests::apply;
use lanyard_rotator::local::{Durability, LocalController, LocalOptions};
use lanyard_rotator::metrics::Metrics;

/// The `lanyard` binary's allocator, so the bench measures what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(clippy::disallowed_methods, reason = "a benchmark measures wall time")]
fn stopwatch() -> Instant {
    Instant::now()
}

/// Keys generated and certificates signed per second by the CA core alone,
/// on one thread, or on every thread of rayon's pool with `parallel`.
fn raw_issuance_rate(material: &IssuerMaterial, n: usize, parallel: bool) -> f64 {
    use rayon::prelude::*;
    let IssuerMaterial::Ca { ca, .. } = material else {
        unreachable!("a CA issuer")
    };
    let template = CertificateTemplate {
        common_name: None,
        dns_names: vec!["web.default.svc.cluster.local".into()],
        uris: vec![],
        is_ca: false,
        usages: vec![KeyUsage::DigitalSignature],
        lifetime: TimeDelta::hours(24),
    };
    let now = SystemClock.now();
    let one = |_| {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        std::hint::black_box(ca.sign(&template, &key, now).expect("sign"));
    };
    let start = stopwatch();
    if parallel {
        (0..n).into_par_iter().for_each(one);
    } else {
        (0..n).for_each(one);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Secret volumes written per second with nothing else done: `n`
/// kubelet-style volumes of a leaf Secret's size (`tls.crt`, `tls.key`,
/// `ca.crt`, the metadata file), on every core, into one namespace
/// directory under `root`, as a cold pass lays them out. The filesystem's
/// share of a cold pass, measured on the same filesystem.
fn volume_write_rate(root: &std::path::Path, n: usize, flush: bool) -> f64 {
    use rayon::prelude::*;
    let crt = vec![b'c'; 1_300];
    let key = vec![b'k'; 241];
    let ca = vec![b'a'; 600];
    let metadata = vec![b'm'; 330];
    let namespace = root.join("volumes");
    std::fs::create_dir_all(&namespace).expect("scratch directory");
    let start = stopwatch();
    (0..n).into_par_iter().for_each(|i| {
        let files = [
            ("tls.crt", crt.as_slice(), 0o644),
            ("tls.key", key.as_slice(), 0o600),
            ("ca.crt", ca.as_slice(), 0o644),
            ("..metadata.json", metadata.as_slice(), 0o644),
        ];
        let staged = lanyard_files::volume::stage(&namespace.join(format!("v{i}")), &files, flush)
            .expect("stage");
        staged.commit(flush).expect("commit");
    });
    n as f64 / start.elapsed().as_secs_f64()
}

/// The Issuer and `n` Certificates, in files of 500 documents (a manifest
/// file holds at most 1,024, the YAML parser's guard against document
/// storms).
fn manifests(n: usize) -> Vec<(std::path::PathBuf, String)> {
    let mut files = vec![(
        "issuer.yaml".into(),
        "apiVersion: lanyard.dev/v1\nkind: Issuer\nmetadata:\n  name: identity\n  namespace: linkerd\nspec:\n  ca:\n    secretName: linkerd-identity-issuer\n".to_string(),
    )];
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        files.push((
            format!("bench-{}.yaml", chunk[0]).into(),
            certificates_yaml(chunk),
        ));
    }
    files
}

fn certificates_yaml(indices: &[usize]) -> String {
    let mut out = String::new();
    for i in indices {
        let _ = write!(
            out,
            "---\napiVersion: lanyard.dev/v1\nkind: Certificate\nmetadata:\n  name: w{i}\n  namespace: linkerd\nspec:\n  secretName: w{i}-tls\n  dnsNames: [w{i}.linkerd.svc.cluster.local]\n  duration: 24h\n  issuerRef: {{name: identity}}\n"
        );
    }
    out
}

struct Run {
    cold: Duration,
    steady: Duration,
    due: Duration,
    issued: usize,
}

fn run(
    n: usize,
    durability: Durability,
    cold_only: bool,
) -> (Run, IssuerMaterial, tempfile::TempDir) {
    let dir = tempfile::tempdir_in(
        std::env::var_os("LANYARD_BENCH_DIR")
            .unwrap_or_else(|| std::env::temp_dir().into_os_string()),
    )
    .expect("scratch directory");
    let options = LocalOptions {
        state_dir: dir.path().to_path_buf(),
        domain: IdentityDomain::linkerd_default(),
        cluster_resource_namespace: "lanyard".into(),
        durability,
    };
    let mut controller =
        LocalController::open(options.clone(), SystemClock, Arc::new(Metrics::new()))
            .expect("open");
    controller.bootstrap().expect("bootstrap");
    // The identity issuer first, so the cold pass measures leaves only.
    controller.reconcile_all().expect("issuer pass");
    apply(
        &options.manifests_dir(),
        &options.secret_store(),
        &manifests(n),
        "default",
    )
    .expect("apply");

    // Earlier runs' dirty pages are not this pass's to flush.
    options.secret_store().flush_all().expect("flush");
    let start = stopwatch();
    let cold = controller.reconcile_all().expect("cold pass");
    let cold_time = start.elapsed();
    assert!(cold.failed.is_empty(), "{:?}", cold.failed.first());
    if cold_only {
        // The monotonic clock's readings, for a profiler's time filter
        // (`perf record -k CLOCK_MONOTONIC`, then `perf report --time`).
        println!(
            "cold pass {:.3} s, {} issued; monotonic {:?} .. {:?}",
            cold_time.as_secs_f64(),
            cold.issued.len(),
            start,
            start + cold_time
        );
        drop(controller);
        drop(dir);
        std::process::exit(0);
    }
    let start = stopwatch();
    let steady = controller.reconcile_all().expect("steady pass");
    let steady_time = start.elapsed();
    assert!(steady.issued.is_empty() && steady.failed.is_empty());
    let start = stopwatch();
    let due = controller.reconcile_due().expect("due pass");
    let due_time = start.elapsed();
    assert!(due.issued.is_empty() && due.failed.is_empty());

    let issuer_secret = options
        .secret_store()
        .read("linkerd", "linkerd-identity-issuer")
        .expect("read")
        .expect("issuer secret");
    let material = load_issuer(
        IssuerKind::Issuer,
        "identity",
        &lanyard_crds::api::IssuerConfig {
            ca: Some(lanyard_crds::api::CaIssuer {
                secret_name: "linkerd-identity-issuer".into(),
            }),
            self_signed: None,
        },
        Some(&issuer_secret),
        "linkerd/linkerd-identity-issuer",
        SystemClock.now(),
    )
    .expect("issuer");
    (
        Run {
            cold: cold_time,
            steady: steady_time,
            due: due_time,
            issued: cold.issued.len(),
        },
        material,
        dir,
    )
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick { 50 } else { 10_000 };
    // `--cold-only`: one cold pass with deferred flushes and nothing else,
    // for a profiler to see the pass alone.
    if std::env::args().any(|a| a == "--cold-only") {
        run(n, Durability::Deferred, true);
    }

    // Each run's files stay until the end: on ext4, deleting them would
    // slow the next run, whose new inodes skip those deleted in the last
    // minutes (the inode allocator's `recently_deleted` check). For the same
    // reason, a run started within minutes of another's end (or of a large
    // build's cleanup) measures the filesystem's state more than Lanyard.
    let mut dirs = Vec::new();
    for (label, durability, n) in [
        ("deferred flush", Durability::Deferred, n),
        ("fsync every write", Durability::Fsync, n / 10),
    ] {
        let (run, material, dir) = run(n, durability, false);
        // Volumes alone, beside the pass's own (the fsync run stages and
        // commits each volume with its own flushes, a bound below a pass's
        // two filesystem flushes).
        let volumes = volume_write_rate(dir.path(), n, durability == Durability::Fsync);
        dirs.push(dir);
        // The peer: the CA core's raw rate, before and after, same material.
        let raw = (raw_issuance_rate(&material, n.min(2_000), false)
            + raw_issuance_rate(&material, n.min(2_000), false))
            / 2.0;
        let raw_all = (raw_issuance_rate(&material, n.min(4_000), true)
            + raw_issuance_rate(&material, n.min(4_000), true))
            / 2.0;
        let cold_rate = run.issued as f64 / run.cold.as_secs_f64();
        let steady_rate = n as f64 / run.steady.as_secs_f64();
        println!("local shell, {n} Certificates, {label}:");
        println!(
            "  cold pass   {:>9.3} s  {:>9.0} certificates/s (issued {})",
            run.cold.as_secs_f64(),
            cold_rate,
            run.issued
        );
        println!(
            "  steady pass {:>9.3} s  {:>9.0} certificates/s",
            run.steady.as_secs_f64(),
            steady_rate
        );
        println!(
            "  due pass    {:>9.3} s  (what a renewal wake costs when nothing else is due)",
            run.due.as_secs_f64()
        );
        println!(
            "  Secret volumes alone  {volumes:>9.0} /s on {} threads (10 entries each, no issuance{})",
            rayon::current_num_threads(),
            if durability == Durability::Fsync {
                "; each volume flushed on its own"
            } else {
                ""
            }
        );
        println!("  CA core raw issuance (P-256 keygen + sign) {raw:>9.0} /s on one thread");
        println!(
            "  CA core raw issuance on {} threads         {raw_all:>9.0} /s",
            rayon::current_num_threads()
        );
        println!(
            "  cold pass / raw issuance = {:.2} (goal >= 0.5)",
            cold_rate / raw
        );
        println!(
            "  cold pass / Secret volumes alone = {:.2}; the goal's rate, raw issuance / 2 = {:.0} /s, is {}",
            cold_rate / volumes,
            raw / 2.0,
            if raw / 2.0 > volumes {
                "above the volumes alone: out of this filesystem's reach"
            } else {
                "within the volumes alone"
            }
        );
        println!(
            "  cold pass / raw issuance on {} threads = {:.2}",
            rayon::current_num_threads(),
            cold_rate / raw_all
        );
    }
}
