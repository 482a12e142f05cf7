//! Running `lanyard` and the real `openssl` over files in a temporary
//! directory.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
