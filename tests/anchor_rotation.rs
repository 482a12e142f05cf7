//! The trust anchor's rotation with overlap as a mesh lives through it: the
//! real `lanyard up`, two real `lanyard-proxy` processes carrying HTTP over
//! mTLS, a `kill -9` of `lanyard up` in the middle of the rotation, and the
//! result checked with `openssl` (fingerprints, `verify`, `s_client`).
//!
//! The proxy is the `lanyard-proxy` binary beside `lanyard`, which
//! `cargo test --workspace` builds; `cargo test --test anchor_rotation`
//! alone does not rebuild it (`cargo build -p lanyard-proxy` first).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use lanyard_crds::time::{Clock, SystemClock};
use support::{Scratch, eventually_within, keep_reading, metric_value, send_signal, wait_exit};

const API: &str = "api.shop.serviceaccount.identity.linkerd.cluster.local";
const WEB: &str = "web.front.serviceaccount.identity.linkerd.cluster.local";
const STATE_FILE: &str = "state/anchors/linkerd-trust-anchor.json";
const BUNDLE: &str = "state/bundles/linkerd-identity-trust-roots.pem";
const ANCHOR_SECRET: &str = "state/secrets/lanyard/linkerd-trust-anchor";
const NEXT_SECRET: &str = "state/secrets/lanyard/linkerd-trust-anchor-next";
const ISSUER_SECRET: &str = "state/secrets/linkerd/linkerd-identity-issuer";
const MADE_ANCHOR: &str = "trust anchor rotation: made the new anchor";

fn now() -> DateTime<Utc> {
    SystemClock.now()
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A child process with its stdout and stderr gathered in one log; killed
/// on drop, and its log printed when the test is failing.
struct Running {
    name: &'static str,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Running {
    fn spawn(name: &'static str, program: &Path, args: &[String], dir: &Path) -> Running {
        let mut child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", program.display()));
        eprintln!(
            "started {name} (pid {}): {} {}",
            child.id(),
            program.display(),
            args.join(" ")
        );
        let log = Arc::new(Mutex::new(String::new()));
        keep_reading(child.stdout.take().expect("piped"), log.clone());
        keep_reading(child.stderr.take().expect("piped"), log.clone());
        Running { name, child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Polls the admin server's `/ready` until it answers 200, failing at
    /// once if the process exits.
    fn wait_ready(&mut self, admin: &str, bound: Duration) {
        let name = self.name;
        eventually_within(&format!("{name} to be ready on {admin}"), bound, || {
            if let Some(status) = self.exited() {
                panic!(
                    "{name} exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            try_http_get(admin, "/ready").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        });
    }

    fn metrics(&self, admin: &str) -> String {
        try_http_get(admin, "/metrics")
            .unwrap_or_else(|| panic!("{} serves no /metrics on {admin}", self.name))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- log of {} -----\n{}", self.name, self.log());
        }
    }
}

/// One HTTP/1.1 GET with `Connection: close`; the whole response, or
/// `None` when nothing answers.
fn try_http_get(addr: &str, path: &str) -> Option<String> {
    let addr: SocketAddr = addr.parse().expect("an address");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// Free loopback ports, all distinct: bound at once, then released.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// The application behind proxy B: answers every request `200 ok` and
/// closes, so no pooled connection can race a close.
struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Backend {
    fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the backend");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    );
                });
            }
        });
        Backend { addr, stop }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Requests through proxy A's outbound listener, one fresh connection (so
/// one fresh mTLS handshake A→B) each, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

/// One request; why it failed.
fn one_request(addr: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| format!("socket options: {e}"))?;
    stream
        .write_all(b"GET /through-the-mesh HTTP/1.1\r\nHost: api.shop\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("read (after {} bytes): {e}", response.len()))?;
    let response = String::from_utf8_lossy(&response);
    if response.starts_with("HTTP/1.1 200") && response.ends_with("\r\n\r\nok") {
        Ok(())
    } else if response.is_empty() {
        Err("connection closed with no response".into())
    } else {
        Err(format!(
            "unexpected response: {:?}",
            response.chars().take(200).collect::<String>()
        ))
    }
}

impl Traffic {
    fn start(addr: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, ok, failed, failures) =
                (stop.clone(), ok.clone(), failed.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let started = now();
                    match one_request(addr) {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(why) => {
                            let n = failed.fetch_add(1, Ordering::SeqCst);
                            if n < 20 {
                                failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("request sent at {}: {why}", stamp(started)));
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(30));
                }
            })
        };
        Traffic {
            stop,
            ok,
            failed,
            failures,
            thread: Some(thread),
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    /// Stops the requests; (succeeded, failed, the first failures).
    fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the traffic thread does not panic");
        }
        (
            self.ok(),
            self.failed(),
            self.failures.lock().unwrap().clone(),
        )
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the traffic had done at each step, printed with any failure.
#[derive(Default)]
struct Timeline(Vec<String>);

impl Timeline {
    fn mark(&mut self, what: &str, traffic: &Traffic) {
        self.note(what, traffic.ok(), traffic.failed());
    }

    fn note(&mut self, what: &str, ok: u64, failed: u64) {
        let line = format!(
            "{}  {what}  (requests ok {ok}, failed {failed})",
            stamp(now())
        );
        eprintln!("timeline: {line}");
        self.0.push(line);
    }
}

/// Polls `check` every `every` until it holds, failing once `bound` has
/// passed by the clock (the checks here run commands, so counting rounds
/// would not bound the time).
fn poll_until(what: &str, bound: Duration, every: Duration, mut check: impl FnMut() -> bool) {
    let deadline = now() + chrono::TimeDelta::from_std(bound).expect("a short bound");
    loop {
        if check() {
            return;
        }
        assert!(
            now() < deadline,
            "timed out after {bound:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

impl std::fmt::Display for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for line in &self.0 {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// The rotation as the state file records it; `None` while unreadable.
fn rotation(scratch: &Scratch) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(scratch.path(STATE_FILE)).ok()?;
    let record: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(record.get("rotation")?.clone())
}

fn field(rotation: &serde_json::Value, name: &str) -> String {
    rotation[name].as_str().unwrap_or_default().to_string()
}

/// `lanyard up` on `./state` with 1-minute leaves and a 3-second
/// propagation delay, on fixed ports so that a restart serves where the
/// proxies look.
fn start_up(scratch: &Scratch, name: &'static str, metrics: &str, identity: &str) -> Running {
    let args: Vec<String> = [
        "up",
        "--state-dir",
        "state",
        "--issuance-lifetime",
        "1m",
        "--propagation-delay",
        "3s",
        "--metrics-addr",
        metrics,
        "--identity-addr",
        identity,
    ]
    .map(String::from)
    .to_vec();
    let mut up = Running::spawn(
        name,
        Path::new(env!("CARGO_BIN_EXE_lanyard")),
        &args,
        scratch.dir(),
    );
    // Ready: the identity issuer is loaded and the identity service serves.
    up.wait_ready(metrics, Duration::from_secs(60));
    up
}

/// The `lanyard-proxy` binary beside `lanyard`.
fn proxy_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_lanyard")).with_file_name("lanyard-proxy");
    assert!(
        path.is_file(),
        "{} is missing: this test runs the real proxy; build it first with \
         `cargo build -p lanyard-proxy` (or run the whole suite with `cargo test --workspace`)",
        path.display()
    );
    path
}

/// The PEM certificates in `text`, in order.
fn pem_blocks(text: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let end = start + end + END.len();
        blocks.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    blocks
}

/// The SHA-256 fingerprints, as `openssl x509` prints them, of every
/// certificate in the file at `path`.
fn fingerprints(scratch: &Scratch, path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    std::fs::create_dir_all(scratch.path("checks")).unwrap();
    let label = path
        .strip_prefix(scratch.dir())
        .unwrap_or(path)
        .display()
        .to_string()
        .replace('/', "_");
    pem_blocks(&text)
        .iter()
        .enumerate()
        .map(|(i, block)| {
            let file = format!("checks/{label}.{i}.pem");
            scratch.write(&file, block);
            let out = scratch
                .openssl(&["x509", "-in", &file, "-noout", "-fingerprint", "-sha256"])
                .success()
                .stdout;
            out.trim()
                .rsplit('=')
                .next()
                .expect("openssl prints Fingerprint=...")
                .to_string()
        })
        .collect()
}

/// Every file called `name` under `dir`, symlinks to files included
/// (Secrets are directories of symlinks into timestamped data
/// directories, which are walked too).
fn files_named(dir: &Path, name: &str, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let kind = entry.file_type().expect("a file type");
        if kind.is_dir() {
            files_named(&entry.path(), name, found);
        } else if entry.file_name() == name {
            found.push(entry.path());
        }
    }
}

/// The certificate chain a TLS server at `addr` presents, saved to
/// `checks/<file>`.
fn served_chain(scratch: &Scratch, addr: &str, extra: &[&str], file: &str) -> String {
    let mut args = vec!["s_client", "-connect", addr, "-showcerts"];
    args.extend_from_slice(extra);
    let out = scratch.openssl(&args);
    let chain: String = pem_blocks(&out.stdout).concat();
    assert!(
        !chain.is_empty(),
        "no certificate from {addr}:\n{}{}",
        out.stdout,
        out.stderr
    );
    std::fs::create_dir_all(scratch.path("checks")).unwrap();
    let path = format!("checks/{file}");
    scratch.write(&path, chain);
    path
}

/// `chain`'s first certificate verifies against `anchor` alone, using the
/// rest of the chain as intermediates (and fails against `old` alone).
fn assert_chains_only_to(scratch: &Scratch, chain: &str, anchor: &str, old: &str) {
    scratch
        .openssl(&["verify", "-CAfile", anchor, "-untrusted", chain, chain])
        .success();
    let ran = scratch.openssl(&["verify", "-CAfile", old, "-untrusted", chain, chain]);
    let said = format!("{}{}", ran.stdout, ran.stderr);
    assert!(
        !ran.ok && said.contains("unable to get local issuer certificate"),
        "{chain} must fail against the old anchor alone for want of an issuer:\n{said}"
    );
}

/// The sum of the series of `family` whose line contains every one of
/// `labels`.
fn sum_series(text: &str, family: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(family) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// [`metric_value`], with no series read as 0 rather than -0.
fn count(text: &str, series: &str) -> f64 {
    metric_value(text, series) + 0.0
}

fn assert_registered(text: &str, who: &str, family: &str) {
    assert!(
        text.contains(&format!("# TYPE {family} ")),
        "{who} no longer exports `{family}`; the check on it would prove nothing:\n{text}"
    );
}

fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn the_anchor_rotates_under_traffic_with_no_failed_request_and_resumes_after_a_kill() {
    let proxy = proxy_binary();
    let scratch = Scratch::new();
    let began = now();
    let [
        metrics_port,
        identity_port,
        b_admin,
        b_inbound,
        a_admin,
        a_inbound,
        a_outbound,
    ] = free_ports::<7>();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let identity = format!("127.0.0.1:{identity_port}");
    let b_admin = format!("127.0.0.1:{b_admin}");
    let b_inbound = format!("127.0.0.1:{b_inbound}");
    let a_admin = format!("127.0.0.1:{a_admin}");
    let a_inbound = format!("127.0.0.1:{a_inbound}");
    let a_outbound = format!("127.0.0.1:{a_outbound}");

    // 1. `lanyard up`, its bundle and its identity service.
    let mut up = start_up(&scratch, "lanyard up (first run)", &metrics, &identity);
    assert!(scratch.exists(BUNDLE), "up is ready but wrote no bundle");
    let old_id = field(&rotation(&scratch).expect("the rotation state"), "current");
    assert_eq!(
        fingerprints(&scratch, &scratch.path(BUNDLE)),
        std::slice::from_ref(&old_id)
    );
    std::fs::create_dir_all(scratch.path("checks")).unwrap();
    scratch.write(
        "checks/old-anchor.pem",
        scratch.read(&format!("{ANCHOR_SECRET}/tls.crt")),
    );
    assert_eq!(
        fingerprints(&scratch, &scratch.path("checks/old-anchor.pem")),
        std::slice::from_ref(&old_id)
    );

    // 2. The backend and the two proxies, both trusting the bundle file.
    let backend = Backend::start();
    scratch.write("api.token", scratch.token("shop", "api"));
    scratch.write("web.token", scratch.token("front", "web"));
    let bundle = scratch.path(BUNDLE).display().to_string();
    let proxy_args = |id: &str, token: &str, admin: &str, inbound: &str| -> Vec<String> {
        [
            "--identity",
            id,
            "--token-file",
            token,
            "--trust-anchors",
            &bundle,
            "--identity-addr",
            &identity,
            "--admin-addr",
            admin,
            "--inbound-addr",
            inbound,
        ]
        .map(String::from)
        .to_vec()
    };
    let mut b_args = proxy_args(API, "api.token", &b_admin, &b_inbound);
    b_args.extend(
        [
            "--app-addr",
            &backend.addr.to_string(),
            "--namespace",
            "shop",
            "--pod-label",
            "app=api",
        ]
        .map(String::from),
    );
    let mut proxy_b = Running::spawn(
        "lanyard-proxy B (api, inbound)",
        &proxy,
        &b_args,
        scratch.dir(),
    );
    let mut a_args = proxy_args(WEB, "web.token", &a_admin, &a_inbound);
    a_args.extend(
        [
            "--outbound",
            &format!("{a_outbound}={b_inbound},{API}"),
            "--namespace",
            "front",
        ]
        .map(String::from),
    );
    let mut proxy_a = Running::spawn(
        "lanyard-proxy A (web, outbound)",
        &proxy,
        &a_args,
        scratch.dir(),
    );
    proxy_b.wait_ready(&b_admin, Duration::from_secs(60));
    proxy_a.wait_ready(&a_admin, Duration::from_secs(60));
    let outbound: SocketAddr = a_outbound.parse().unwrap();
    poll_until(
        "a first request through A and B",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || match one_request(outbound) {
            Ok(()) => true,
            Err(why) => {
                eprintln!("not yet through the mesh: {why}");
                false
            }
        },
    );

    // 3. Traffic from here to the end.
    let traffic = Traffic::start(outbound);
    let mut timeline = Timeline::default();
    timeline.mark("traffic started", &traffic);
    eventually_within("requests flowing", Duration::from_secs(30), || {
        traffic.ok() + traffic.failed() >= 10
    });

    // B's leaf chains to the old anchor before the rotation.
    let before = served_chain(&scratch, &b_inbound, &[], "b-chain-before.pem");
    scratch
        .openssl(&[
            "verify",
            "-CAfile",
            "checks/old-anchor.pem",
            "-untrusted",
            &before,
            &before,
        ])
        .success();

    // 4. The rotation, asked for by hand; a second request is refused
    //    while it runs, naming its phase.
    scratch
        .lanyard(&["anchor", "rotate", "--state-dir", "state"])
        .success();
    timeline.mark("rotation requested", &traffic);
    eventually_within("the rotation to start", Duration::from_secs(30), || {
        rotation(&scratch).is_some_and(|r| field(&r, "phase") != "Stable")
    });
    let refused = scratch
        .lanyard(&["anchor", "rotate", "--state-dir", "state"])
        .failure_saying("refused: a rotation is already under way (phase ");
    assert_eq!(refused.code, Some(1), "a refusal exits 1");
    let phase = refused
        .stderr
        .split("(phase ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_default();
    assert!(
        ["Prepared", "Propagated", "IssuerSwitched", "Drained"].contains(&phase),
        "the refusal names `{phase}`, not a rotation phase: {}",
        refused.stderr
    );

    // 5. Once the issuer signs under the new anchor, `kill -9`.
    let mut during = String::new();
    poll_until(
        "the phase IssuerSwitched, in the state file and the metric",
        Duration::from_secs(90),
        Duration::from_millis(100),
        || {
            during = up.metrics(&metrics);
            rotation(&scratch).is_some_and(|r| field(&r, "phase") == "IssuerSwitched")
                && metric_value(
                    &during,
                    "lanyard_trust_anchor_rotation_phase{anchor=\"linkerd-trust-anchor\",phase=\"IssuerSwitched\"}",
                ) == 1.0
        },
    );
    timeline.mark("IssuerSwitched", &traffic);
    assert_eq!(
        metric_value(
            &during,
            "lanyard_trust_bundle_anchors{bundle=\"linkerd-identity-trust-roots\"}"
        ),
        2.0,
        "both anchors are trusted during the overlap:\n{during}"
    );
    let overlap = fingerprints(&scratch, &scratch.path(BUNDLE));
    assert_eq!(
        overlap.len(),
        2,
        "the bundle holds both anchors: {overlap:?}"
    );
    assert!(overlap.contains(&old_id), "{overlap:?}");

    send_signal(&up.child, "KILL");
    let status = wait_exit(&mut up.child, Duration::from_secs(10)).expect("kill -9 ends up");
    assert!(!status.success(), "{status}");
    timeline.mark("lanyard up killed with SIGKILL", &traffic);
    let first_log = up.log();
    let at_kill = rotation(&scratch).expect("the state file survives the kill");
    let phase = field(&at_kill, "phase");
    assert!(
        ["IssuerSwitched", "Drained"].contains(&phase.as_str()),
        "the state file says {phase} after the kill: {at_kill}"
    );
    assert_eq!(field(&at_kill, "current"), old_id, "{at_kill}");
    let next_id = field(&at_kill, "next");
    assert!(!next_id.is_empty(), "no new anchor recorded: {at_kill}");
    assert_ne!(next_id, old_id);
    assert!(overlap.contains(&next_id), "{overlap:?} lacks {next_id}");
    if phase == "IssuerSwitched" {
        assert_eq!(
            fingerprints(&scratch, &scratch.path(&format!("{NEXT_SECRET}/tls.crt"))),
            std::slice::from_ref(&next_id),
            "the prepared Secret holds the recorded new anchor"
        );
    }
    scratch.write(
        "checks/new-anchor.pem",
        scratch.read(&format!("{ANCHOR_SECRET}/tls.crt")),
    );
    assert_eq!(
        fingerprints(&scratch, &scratch.path("checks/new-anchor.pem")),
        std::slice::from_ref(&next_id),
        "the CA signs with the new anchor since the switch"
    );

    let restarted_at = now();
    let up = start_up(&scratch, "lanyard up (after the kill)", &metrics, &identity);
    timeline.mark("lanyard up restarted and ready", &traffic);
    poll_until(
        "the rotation to finish (Stable, 1 completed)",
        Duration::from_secs(240),
        Duration::from_secs(1),
        || {
            let status = scratch
                .lanyard(&["anchor", "status", "--state-dir", "state"])
                .success()
                .stdout;
            status.contains("phase:        Stable (since")
                && status.contains("completed:    1 rotation(s)")
        },
    );
    timeline.mark("Stable, one rotation completed", &traffic);
    let finished_at = now();

    // 6. Ten more seconds of traffic with only the new anchor trusted.
    let after_stable = traffic.ok();
    std::thread::sleep(Duration::from_secs(10));
    poll_until(
        "20 requests after the old anchor's removal",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || traffic.ok() + traffic.failed() >= after_stable + 20,
    );
    let b_metrics = proxy_b.metrics(&b_admin);
    let a_metrics = proxy_a.metrics(&a_admin);
    let (ok, failed, failures) = traffic.finish();
    timeline.note("traffic stopped", ok, failed);
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the rotation; the first:\n  {}\ntimeline:\n{timeline}",
        ok + failed,
        failures.join("\n  ")
    );
    assert!(
        ok >= 100 && ok - after_stable >= 20,
        "too few requests went through to prove anything: {ok} in all, {} after Stable\n{timeline}",
        ok - after_stable
    );

    for (who, text, families) in [
        (
            "proxy B",
            &b_metrics,
            [
                "inbound_http_errors",
                "lanyard_proxy_inbound_handshake_timeouts",
                "lanyard_proxy_identity_expired",
            ],
        ),
        (
            "proxy A",
            &a_metrics,
            [
                "outbound_tls_errors",
                "lanyard_proxy_outbound_handshake_timeouts",
                "lanyard_proxy_identity_expired",
            ],
        ),
    ] {
        for family in families {
            // A labelled family with no series yet is not rendered at all,
            // so only the plain counters can be checked for presence;
            // `inbound_http_errors_total{error="tls",...}` is named by the
            // proxy's own tests.
            if family != "inbound_http_errors" {
                assert_registered(text, who, family);
            }
            let value = metric_value(text, &format!("{family}_total"));
            assert_eq!(value, 0.0, "{who}: {family}_total is {value}:\n{text}");
        }
    }
    let mtls_responses = sum_series(
        &b_metrics,
        "response_total{",
        &[
            "direction=\"inbound\"",
            &format!("client_id=\"{WEB}\""),
            "status_code=\"200\"",
        ],
    );
    assert!(
        mtls_responses >= ok as f64,
        "B counted {mtls_responses} mTLS responses to {WEB}, fewer than the {ok} requests that succeeded:\n{b_metrics}"
    );

    // Exactly one new anchor across the crash.
    let second_log = up.log();
    let made = (
        lines_with(&first_log, MADE_ANCHOR).len(),
        lines_with(&second_log, MADE_ANCHOR).len(),
    );
    assert_eq!(
        made,
        (1, 0),
        "`{MADE_ANCHOR}` logged (first run, second run) times"
    );
    let done = rotation(&scratch).expect("the rotation state");
    assert_eq!(field(&done, "phase"), "Stable", "{done}");
    assert_eq!(field(&done, "current"), next_id, "{done}");
    assert_eq!(done["completed"], 1, "{done}");
    assert!(done.get("next").is_none_or(|n| n.is_null()), "{done}");
    assert!(
        !scratch.exists(NEXT_SECRET),
        "the prepared anchor's Secret is left behind"
    );
    let up_metrics = up.metrics(&metrics);
    for (series, want) in [
        (
            "lanyard_trust_anchor_rotation_phase{anchor=\"linkerd-trust-anchor\",phase=\"Stable\"}",
            1.0,
        ),
        (
            "lanyard_trust_bundle_anchors{bundle=\"linkerd-identity-trust-roots\"}",
            1.0,
        ),
        ("lanyard_trust_anchor_rotations_total", 1.0),
        ("lanyard_trust_bundle_errors_total", 0.0),
    ] {
        assert_eq!(
            metric_value(&up_metrics, series),
            want,
            "{series}:\n{up_metrics}"
        );
    }
    assert_registered(&up_metrics, "lanyard up", "lanyard_trust_anchor_rotations");

    // 7. The old anchor is gone from every bundle and every Secret.
    let mut pems: Vec<PathBuf> = std::fs::read_dir(scratch.path("state/bundles"))
        .expect("the bundles directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pem"))
        .collect();
    assert!(!pems.is_empty(), "no bundle left");
    files_named(&scratch.path("state/secrets"), "ca.crt", &mut pems);
    assert!(
        pems.iter().filter(|p| p.ends_with("ca.crt")).count() >= 2,
        "the CA's and the issuer's ca.crt: {pems:?}"
    );
    pems.push(scratch.path(&format!("{ANCHOR_SECRET}/tls.crt")));
    for pem in &pems {
        assert_eq!(
            fingerprints(&scratch, pem),
            std::slice::from_ref(&next_id),
            "{} must hold exactly the new anchor",
            pem.display()
        );
    }

    // 8. The identity issuer and the leaves in use chain to the new
    //    anchor, and not to the old one.
    let (new, old) = ("checks/new-anchor.pem", "checks/old-anchor.pem");
    assert_chains_only_to(&scratch, &format!("{ISSUER_SECRET}/tls.crt"), new, old);
    let b_chain = served_chain(&scratch, &b_inbound, &[], "b-chain.pem");
    assert!(scratch.x509_text(&b_chain).contains(&format!("CN = {API}")));
    assert_chains_only_to(&scratch, &b_chain, new, old);
    let a_chain = served_chain(&scratch, &a_inbound, &[], "a-chain.pem");
    assert!(scratch.x509_text(&a_chain).contains(&format!("CN = {WEB}")));
    assert_chains_only_to(&scratch, &a_chain, new, old);
    let identity_chain = served_chain(&scratch, &identity, &["-alpn", "h2"], "identity-chain.pem");
    assert_chains_only_to(&scratch, &identity_chain, new, old);

    let seconds =
        |from: DateTime<Utc>, to: DateTime<Utc>| (to - from).num_milliseconds() as f64 / 1000.0;
    eprintln!(
        "summary: requests ok {ok}, failed {failed}; B served {mtls_responses} mTLS responses to {WEB}; \
         handshake failures A {}, B {}; identity refresh failures A {}, B {}; \
         restart to Stable {:.1}s; whole test {:.1}s\ntimeline:\n{timeline}",
        count(&a_metrics, "outbound_tls_errors_total")
            + count(
                &a_metrics,
                "lanyard_proxy_outbound_handshake_timeouts_total"
            ),
        count(&b_metrics, "inbound_http_errors_total")
            + count(&b_metrics, "lanyard_proxy_inbound_handshake_timeouts_total"),
        count(&a_metrics, "lanyard_proxy_identity_refresh_failures_total"),
        count(&b_metrics, "lanyard_proxy_identity_refresh_failures_total"),
        seconds(restarted_at, finished_at),
        seconds(began, now()),
    );
    for (who, log) in [
        ("lanyard up (first run)", first_log.as_str()),
        ("lanyard up (after the kill)", second_log.as_str()),
        ("proxy A", &proxy_a.log()),
        ("proxy B", &proxy_b.log()),
    ] {
        for line in log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        {
            eprintln!("{who}: {line}");
        }
    }
}
