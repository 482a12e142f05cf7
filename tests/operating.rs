//! `lanyard up` as a long-running process, tried the way a hostile user or
//! a bad day would try it: signals in the middle of a pass, a second `up`
//! on the same directory, `kill -9`, a directory that cannot be written,
//! an idle hour, and a flood of connections. Nothing here asserts a timing:
//! each test waits on files, counters or exit statuses, with generous
//! bounds.

mod support;

use std::net::TcpStream;
use std::time::Duration;

use support::{Scratch, Up, eventually, eventually_within, start_up};

/// A self-signed Issuer and `count` Certificates it signs with RSA 3072
/// keys, in namespace `load`.
fn many_certificates(count: usize) -> String {
    let mut yaml = String::from(
        "apiVersion: lanyard.dev/v1\nkind: Issuer\nmetadata:\n  name: selfsigned\n  namespace: load\nspec:\n  selfSigned: {}\n",
    );
    for i in 0..count {
        yaml.push_str(&format!(
            "---\napiVersion: lanyard.dev/v1\nkind: Certificate\nmetadata:\n  name: c{i}\n  namespace: load\nspec:\n  secretName: c{i}-tls\n  dnsNames: [c{i}.load.svc.cluster.local]\n  duration: 24h\n  privateKey: {{algorithm: RSA, size: 3072}}\n  issuerRef:\n    name: selfsigned\n"
        ));
    }
    yaml
}

/// Starts `up` on `count` Certificates with RSA 3072 keys, which take a
/// while each, and returns once its first pass is under way: long enough
/// for a signal to land in the middle of it.
fn start_mid_pass(scratch: &Scratch, count: usize) -> Up {
    std::fs::create_dir_all(scratch.path("state/manifests")).unwrap();
    scratch.write("state/manifests/load.yaml", many_certificates(count));
    let up = start_up(scratch, &[]);
    eventually("the first Secrets of the pass", || {
        scratch.exists("state/secrets/load")
    });
    up
}

/// Certificates signed by the guide's trust-anchor ClusterIssuer, which
/// `up` sets up on first start.
fn anchored_certificates(count: usize) -> String {
    (0..count)
        .map(|i| {
            format!(
                "---\napiVersion: lanyard.dev/v1\nkind: Certificate\nmetadata:\n  name: w{i}\n  namespace: work\nspec:\n  secretName: w{i}-tls\n  dnsNames: [w{i}.work.svc.cluster.local]\n  duration: 24h\n  issuerRef:\n    name: linkerd-trust-anchor\n    kind: ClusterIssuer\n"
            )
        })
        .collect()
}

/// Every file or directory under `dir` that a staged write leaves behind
/// when it is interrupted: `.tmp-*` files and unreferenced `..` versions.
fn debris(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let current = std::fs::read_link(dir.join("..data")).ok();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let is_dir = entry.file_type().unwrap().is_dir();
            if name.starts_with(".tmp-") || name.starts_with(".lanyard-") || name == "..data_tmp" {
                found.push(path);
            } else if name.starts_with("..") && name != "..data" {
                if is_dir && current.as_deref() != Some(std::path::Path::new(&name)) {
                    found.push(path);
                }
            } else if is_dir {
                stack.push(path);
            }
        }
    }
    found
}

#[test]
fn sigint_during_a_long_first_pass_stops_every_part_with_status_0_and_leaves_nothing_staged() {
    let scratch = Scratch::new();
    let mut up = start_mid_pass(&scratch, 120);
    up.signal("INT");
    let status = up.wait_exit(Duration::from_secs(30));
    let log = up.log();
    let status = status.unwrap_or_else(|| panic!("`up` still runs 30 s after SIGINT:\n{log}"));
    assert!(status.success(), "exit status {status:?}:\n{log}");
    assert!(log.contains("lanyard: stopped"), "{log}");
    let issued = (0..120)
        .filter(|i| scratch.exists(&format!("state/secrets/load/c{i}-tls/tls.crt")))
        .count();
    assert!(
        issued < 120,
        "the pass was stopped between Certificates, not run to its end ({issued} issued)"
    );
    let left = debris(&scratch.path("state"));
    assert!(left.is_empty(), "staged files left behind: {left:?}");
    // The lock went with the process: a new `up` starts at once.
    let mut again = start_up(&scratch, &[]);
    again.signal("TERM");
    assert!(
        again
            .wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success()),
        "SIGTERM stops it too:\n{}",
        again.log()
    );
}

#[test]
fn a_second_up_on_the_same_directory_is_refused_naming_the_holder_while_apply_and_token_work() {
    let scratch = Scratch::new();
    let up = start_up(&scratch, &[]);
    let second = scratch.lanyard(&support::UP_ARGS);
    second.failure_saying(&format!(
        "in use by another process (pid {})",
        up.child.id()
    ));
    assert_eq!(
        std::fs::read_dir(scratch.path("state/secrets/lanyard"))
            .unwrap()
            .count(),
        1,
        "the second `up` made no trust anchor of its own"
    );
    scratch.write("work.yaml", anchored_certificates(1));
    scratch
        .lanyard(&["apply", "--state-dir", "state", "-f", "work.yaml"])
        .success();
    scratch.token("work", "w0");
    eventually("the applied Certificate", || {
        scratch.exists("state/secrets/work/w0-tls/tls.crt")
    });
}

#[test]
fn an_idle_up_does_no_passes_until_a_manifest_changes() {
    let scratch = Scratch::new();
    let up = start_up(&scratch, &[]);
    eventually("ready", || up.ready());
    scratch.write("work.yaml", anchored_certificates(200));
    scratch
        .lanyard(&["apply", "--state-dir", "state", "-f", "work.yaml"])
        .success();
    eventually_within("200 Certificates issued", Duration::from_secs(60), || {
        up.metric("lanyard_certificate_issued_total{") >= 201.0
    });
    let passes = |up: &Up| up.metric("lanyard_controller_passes_total{");
    // Let the pass that issued them finish and settle.
    let mut settled = passes(&up);
    eventually("the passes to settle", || {
        std::thread::sleep(Duration::from_millis(500));
        let now = passes(&up);
        std::mem::replace(&mut settled, now) == now
    });
    // Reading the manifests directory (as every pass and `get` does)
    // raises inotify events; none of them may wake a pass.
    let before = passes(&up);
    for _ in 0..20 {
        scratch
            .lanyard(&["get", "certificates", "--state-dir", "state"])
            .success();
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        passes(&up),
        before,
        "an idle `up` ran passes with nothing to do:\n{}",
        up.metrics_text()
    );
    // A real change wakes exactly the passes it needs.
    scratch.write("more.yaml", anchored_certificates(201));
    scratch
        .lanyard(&["apply", "--state-dir", "state", "-f", "more.yaml"])
        .success();
    eventually("the new Certificate", || {
        scratch.exists("state/secrets/work/w200-tls/tls.crt")
    });
    assert!(passes(&up) > before);
}

#[test]
fn a_write_error_fails_only_its_certificate_and_clears_with_no_restart() {
    let scratch = Scratch::new();
    let up = start_up(&scratch, &[]);
    eventually("ready", || up.ready());
    // A regular file where the namespace's directory must go: every write
    // of a Secret in `blocked` fails, as on a full or read-only disk (the
    // tests run as root, for whom permission bits are no obstacle).
    std::fs::write(scratch.path("state/secrets/blocked"), "in the way").unwrap();
    let yaml = anchored_certificates(2).replace(
        "namespace: work\nspec:\n  secretName: w1",
        "namespace: blocked\nspec:\n  secretName: w1",
    );
    scratch.write("work.yaml", yaml);
    scratch
        .lanyard(&["apply", "--state-dir", "state", "-f", "work.yaml"])
        .success();
    eventually("the failure counted", || {
        up.metric("lanyard_certificate_issuance_failures_total{name=\"w1\",namespace=\"blocked\"")
            >= 1.0
    });
    let metrics = up.metrics_text();
    assert!(
        metrics.contains("reason=\"WriteFailed\""),
        "the failure names its reason:\n{metrics}"
    );
    assert_eq!(
        support::metric_value(
            &metrics,
            "lanyard_certificate_ready_status{name=\"w1\",namespace=\"blocked\",condition=\"False\""
        ),
        1.0,
        "{metrics}"
    );
    // A pass stages every Secret before it commits any, so w1's failure
    // can be counted just before w0's Secret is committed.
    eventually("the other Certificate was issued", || {
        scratch.exists("state/secrets/work/w0-tls/tls.crt")
    });
    assert!(up.ready(), "`up` still serves");
    assert!(up.log().contains("WriteFailed") || up.log().contains("issuance failed"));
    // The disk is fixed: the retry (after the backoff) succeeds.
    std::fs::remove_file(scratch.path("state/secrets/blocked")).unwrap();
    eventually_within("the retry after the fix", Duration::from_secs(40), || {
        scratch.exists("state/secrets/blocked/w1-tls/tls.crt")
    });
}

#[test]
fn up_starts_on_a_directory_whose_status_cannot_be_written_and_serves_what_it_can() {
    let scratch = Scratch::new();
    {
        let up = start_up(&scratch, &[]);
        eventually("ready", || up.ready());
        up.signal("TERM");
    }
    // Status can no longer be recorded anywhere: a directory stands where
    // the store was.
    for file in ["status.db", "status.db-wal", "status.db-shm"] {
        let _ = std::fs::remove_file(scratch.path(&format!("state/{file}")));
    }
    std::fs::create_dir(scratch.path("state/status.db")).unwrap();
    std::fs::write(scratch.path("state/status.db/in-the-way"), "").unwrap();
    let up = start_up(&scratch, &[]);
    eventually("ready with the issuer it has", || up.ready());
    let log = up.log();
    assert!(
        log.contains("cannot record"),
        "it says what it cannot do:\n{log}"
    );
}

#[test]
fn a_killed_up_leaves_nothing_a_restart_does_not_clean() {
    let scratch = Scratch::new();
    {
        let mut up = start_mid_pass(&scratch, 60);
        up.signal("KILL");
        up.wait_exit(Duration::from_secs(10)).expect("killed");
    }
    // What a kill between stage and commit leaves, whether or not this
    // kill happened to land there: a staged Secret version with its key,
    // a half-made link, temporary status and manifest files.
    let secret = scratch.path("state/secrets/load/c0-tls");
    std::fs::create_dir_all(secret.join("..2026_12_01_00_00_00.x1y2z3")).unwrap();
    std::fs::write(secret.join("..2026_12_01_00_00_00.x1y2z3/tls.key"), "key").unwrap();
    std::os::unix::fs::symlink("..nowhere", secret.join("..data_tmp")).unwrap();
    std::fs::create_dir_all(scratch.path("state/status/certificates/load")).unwrap();
    std::fs::write(
        scratch.path("state/status/certificates/load/.tmp-Ab12Cd"),
        "{",
    )
    .unwrap();
    std::fs::write(scratch.path("state/manifests/.lanyard-Zz9.tmp"), "kind:").unwrap();
    std::fs::create_dir_all(scratch.path("state/.tmp-manifests-Q1")).unwrap();
    assert!(debris(&scratch.path("state")).len() >= 5);

    let up = start_up(&scratch, &[]);
    assert!(
        up.log().contains("left by an interrupted run"),
        "{}",
        up.log()
    );
    let left = debris(&scratch.path("state"));
    assert!(left.is_empty(), "left behind after a restart: {left:?}");
}

#[test]
fn the_first_caller_of_a_fresh_up_is_certified_and_no_refusal_is_counted() {
    let scratch = Scratch::new();
    let token = scratch.token("emojivoto", "web");
    let up = start_up(&scratch, &[]);
    // The anchor exists before the service listens; the issuer may not.
    let anchor = scratch.read("state/secrets/lanyard/linkerd-trust-anchor/ca.crt");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use tonic::transport::{Certificate, Channel, ClientTlsConfig};
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(anchor))
            .domain_name("linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local");
        // One connection, one call: no retries.
        let channel = Channel::from_shared(format!("https://{}", up.identity))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .expect("the first connection is held until the issuer is loaded, not refused");
        let web = lanyard_crds::identity::Identity::new(
            "web",
            "emojivoto",
            lanyard_crds::identity::IdentityDomain::linkerd_default(),
        )
        .unwrap();
        let mut client = lanyard_identity_api::identity_client::IdentityClient::new(channel);
        client
            .certify(support::certify_request(&web, token.as_bytes()))
            .await
            .expect("certified on the first call");
    });
    let metrics = up.metrics_text();
    assert_eq!(
        support::metric_value(
            &metrics,
            "lanyard_identity_issuer_reloads_total{result=\"refused\"}"
        ),
        0.0,
        "a healthy start counts no refusal:\n{metrics}"
    );
    assert!(!up.log().contains("refused"), "{}", up.log());
    eventually("ready", || up.ready());
}

#[test]
fn idle_connections_over_the_cap_are_refused_and_time_out_and_a_real_client_is_still_served() {
    let scratch = Scratch::new();
    // A small cap and a short handshake time, so the flood is cheap.
    let up = start_up(
        &scratch,
        &["--max-connections", "40", "--handshake-timeout", "2s"],
    );
    eventually("ready", || up.ready());
    // 200 idle connections that never start a handshake.
    let flood: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(&up.identity).ok())
        .collect();
    assert!(flood.len() >= 150, "{} connections made", flood.len());
    eventually("connections over the cap refused", || {
        up.metric("lanyard_identity_connections_refused_total") >= 100.0
    });
    assert!(up.metric("lanyard_identity_connections_open") <= 40.0);
    // The idle ones time out and free their places; a real client gets
    // through while the flood is still open.
    eventually_within(
        "the idle connections timed out",
        Duration::from_secs(20),
        || up.metric("lanyard_identity_handshake_timeouts_total") > 0.0,
    );
    let anchor = scratch.path("state/secrets/lanyard/linkerd-trust-anchor/ca.crt");
    let port = up.identity.rsplit(':').next().unwrap().to_string();
    let name = "linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local";
    let served = || {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "--http2",
                "--cacert",
                anchor.to_str().unwrap(),
                "--resolve",
                &format!("{name}:{port}:127.0.0.1"),
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("https://{name}:{port}/"),
            ])
            .output()
            .expect("curl runs (apt-get install -y curl)");
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        code != "000" && !code.is_empty()
    };
    eventually_within("a real client served", Duration::from_secs(20), served);
    assert_eq!(
        up.metric("lanyard_identity_accept_errors_total"),
        0.0,
        "no accept error: the cap, not the descriptor limit, bounded the flood"
    );
    drop(flood);
}
