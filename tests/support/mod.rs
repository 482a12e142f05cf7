//! Running `lanyard` and the real `openssl` over files in a temporary
//! directory.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A Certify request for `identity` with `token`, its CSR made with a new
/// P-256 key (which the caller never needs again).
pub fn certify_request(
    identity: &lanyard_crds::identity::Identity,
    token: &[u8],
) -> lanyard_identity_api::CertifyRequest {
    let key =
        lanyard_issuer::SigningKey::generate(lanyard_issuer::KeyAlgorithm::EcdsaP256).unwrap();
    lanyard_identity_api::CertifyRequest {
        identity: identity.to_string(),
        token: token.to_vec(),
        certificate_signing_request: key.certificate_signing_request(identity).unwrap(),
    }
}

pub const WEB: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";
pub const WEB_SPIFFE: &str = "spiffe://cluster.local/ns/emojivoto/sa/web";

/// A scratch directory and the commands that work in it.
pub struct Scratch {
    dir: tempfile::TempDir,
}

/// What a command did.
pub struct Ran {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn from(what: &str, out: Output) -> Self {
        let ran = Ran {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!("$ {what}\n-> {:?}\n{}{}", ran.code, ran.stdout, ran.stderr);
        ran
    }

    /// Panics with the output unless the command succeeded.
    pub fn success(self) -> Self {
        assert!(self.ok, "command failed:\n{}\n{}", self.stdout, self.stderr);
        self
    }

    /// Panics unless the command failed with a message containing `needle`.
    pub fn failure_saying(self, needle: &str) -> Self {
        assert!(
            !self.ok,
            "command succeeded but should have failed:\n{}",
            self.stdout
        );
        let all = format!("{}{}", self.stdout, self.stderr);
        assert!(all.contains(needle), "expected `{needle}` in:\n{all}");
        self
    }
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn lanyard(&self, args: &[&str]) -> Ran {
        let out = Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .args(args)
            .current_dir(self.dir())
            .output()
            .expect("the lanyard binary runs");
        Ran::from(&format!("lanyard {}", args.join(" ")), out)
    }

    pub fn openssl(&self, args: &[&str]) -> Ran {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `openssl` ({e}); these tests check Lanyard against the real tool: \
                     apt-get install -y openssl"
                )
            });
        Ran::from(&format!("openssl {}", args.join(" ")), out)
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).expect("the file exists")
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) {
        std::fs::write(self.path(name), contents).expect("writable");
    }

    pub fn exists(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    /// `lanyard token create` for `namespace/service_account` in `./state`;
    /// the token.
    pub fn token(&self, namespace: &str, service_account: &str) -> String {
        self.lanyard(&[
            "token",
            "create",
            "--state-dir",
            "state",
            "--namespace",
            namespace,
            "--service-account",
            service_account,
        ])
        .success()
        .stdout
        .trim()
        .to_string()
    }

    /// `lanyard ca init --out <dir>` with extra flags.
    pub fn ca_init(&self, dir: &str, extra: &[&str]) -> Ran {
        let mut args = vec!["ca", "init", "--out", dir];
        args.extend_from_slice(extra);
        self.lanyard(&args)
    }

    /// Splits a PEM chain file into one file per certificate, returning
    /// their names (`<name>.0`, `<name>.1`, ...).
    pub fn split_chain(&self, name: &str) -> Vec<String> {
        let text = self.read(name);
        let mut names = Vec::new();
        for (i, block) in text
            .split_inclusive("-----END CERTIFICATE-----\n")
            .filter(|b| b.contains("BEGIN CERTIFICATE"))
            .enumerate()
        {
            let part = format!("{name}.{i}");
            self.write(&part, block);
            names.push(part);
        }
        names
    }

    /// `openssl x509 -text -noout` of a file.
    pub fn x509_text(&self, name: &str) -> String {
        self.openssl(&["x509", "-in", name, "-noout", "-text"])
            .success()
            .stdout
    }
}

/// One HTTP/1.1 GET with `Connection: close`; the whole response, head
/// and body.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to metrics");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// A running `lanyard up`, killed on drop.
pub struct Up {
    pub child: Child,
    pub metrics: String,
    pub identity: String,
    /// Everything it has written to stderr so far.
    pub stderr: Arc<Mutex<String>>,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` (`INT`, `TERM`, `KILL`) to `child` with the shell's
/// `kill`.
pub fn send_signal(child: &Child, signal: &str) {
    let status = Command::new("sh")
        .args(["-c", &format!("kill -{signal} {}", child.id())])
        .status()
        .expect("sh runs");
    assert!(status.success(), "kill -{signal} failed");
}

/// Waits for `child` to exit, at most `bound`.
pub fn wait_exit(child: &mut Child, bound: Duration) -> Option<ExitStatus> {
    for _ in 0..(bound.as_millis() / 50).max(1) {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

impl Up {
    /// Sends `signal` (`INT`, `TERM`, `KILL`).
    pub fn signal(&self, signal: &str) {
        send_signal(&self.child, signal);
    }

    /// Waits for the process to exit, at most `bound`.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, bound)
    }

    /// The metrics page.
    pub fn metrics_text(&self) -> String {
        http_get(&self.metrics, "/metrics")
    }

    /// The value of the first series whose name and labels start with
    /// `series`, 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics_text(), series)
    }

    /// Whether `/ready` answers 200.
    pub fn ready(&self) -> bool {
        http_get(&self.metrics, "/ready").starts_with("HTTP/1.1 200")
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

/// The sum of the series in `text` whose name and labels start with
/// `series` (so `name{` sums a family), 0 when there is none.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `lanyard up` on `./state`, serving on free loopback ports.
pub const UP_ARGS: [&str; 7] = [
    "up",
    "--state-dir",
    "state",
    "--metrics-addr",
    "127.0.0.1:0",
    "--identity-addr",
    "127.0.0.1:0",
];

/// Starts `lanyard up --state-dir state` on free loopback ports, with
/// `extra` flags, and waits until both addresses are announced.
pub fn start_up(scratch: &Scratch, extra: &[&str]) -> Up {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lanyard"));
    command
        .args(UP_ARGS)
        .args(extra)
        .current_dir(scratch.dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("lanyard up starts");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let seen = Arc::new(Mutex::new(String::new()));
    let mut buf = [0u8; 4096];
    // Both addresses are announced on stderr once serving.
    let find = |seen: &str, prefix: &str| {
        let start = seen.find(prefix)? + prefix.len();
        let rest = &seen[start..];
        let end = rest.find(|c: char| c == '/' || c.is_whitespace())?;
        Some(rest[..end].to_string())
    };
    let (metrics, identity) = loop {
        let n = stderr.read(&mut buf).expect("read stderr");
        let mut text = seen.lock().unwrap();
        assert!(n > 0, "lanyard up exited early:\n{text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        if let (Some(m), Some(i)) = (
            find(&text, "metrics on http://"),
            find(&text, "identity service on https://")
                .or_else(|| find(&text, "identity service on http://")),
        ) && text[text.find("identity service on").unwrap()..].contains('\n')
        {
            break (m, i);
        }
    };
    keep_reading(stderr, seen.clone());
    Up {
        child,
        metrics,
        identity,
        stderr: seen,
    }
}

/// Keeps reading a child's stderr into `log` on a thread of its own, so the
/// child never blocks on a full pipe and the tests can read what it said.
pub fn keep_reading(mut stderr: impl Read + Send + 'static, log: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            log.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

/// Polls `check` until it holds or ten seconds pass.
pub fn eventually(what: &str, check: impl FnMut() -> bool) {
    eventually_within(what, Duration::from_secs(10), check);
}

/// Polls `check` every 100 ms until it holds or `bound` passes.
pub fn eventually_within(what: &str, bound: Duration, mut check: impl FnMut() -> bool) {
    for _ in 0..(bound.as_millis() / 100).max(1) {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}
