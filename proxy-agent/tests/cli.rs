//! The `lanyard-proxy` binary in `--agent-only` mode against the identity
//! service over loopback TLS: not ready until the first certificate, then
//! files written atomically, metrics, and clear refusals of bad flags.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use lanyard_crds::time::{Clock, SystemClock};
use lanyard_issuer::{Certificate, KeyAlgorithm, SigningKey, verify_chain};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_lanyard-proxy");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `lanyard-proxy` process, killed when dropped, and its stderr lines.
struct Proxy {
    _child: Killed,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Proxy {
    fn spawn(args: &[String]) -> Proxy {
        let mut child = Command::new(BIN)
            .args(args)
            .env("LANYARD_LOG", "warn")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("lanyard-proxy: {line}");
                let _ = tx.send(line);
            }
        });
        Proxy {
            _child: Killed(child),
            lines,
        }
    }

    /// Sends `signal` (`INT`, `TERM`) and waits, at most 30 s, for the
    /// exit status.
    fn stop(&mut self, signal: &str) -> Option<std::process::ExitStatus> {
        let child = &mut self._child.0;
        let sent = Command::new("sh")
            .args(["-c", &format!("kill -{signal} {}", child.id())])
            .status()
            .unwrap();
        assert!(sent.success());
        for _ in 0..600 {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The first word after `marker` on the first stderr line holding it.
    fn wait_for(&self, marker: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("`{marker}` on stderr"));
            if let Some(rest) = line.split(marker).nth(1) {
                return rest.split_whitespace().next().unwrap().to_string();
            }
        }
    }
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_only_is_not_ready_until_its_first_certificate_then_writes_files() {
    let dir = tempfile::tempdir().unwrap();
    // The service starts with no issuer: every call is UNAVAILABLE.
    let mut started = common::Service::start(dir.path(), false).await;
    started.token_file("emojivoto", "web", &dir.path().join("token"));
    let service = started.addr;
    let slot = started.slot.clone();
    let issuer = started.issuer.take().unwrap();

    let out = dir.path().join("out");
    let mut args: Vec<String> = vec![
        "--agent-only".into(),
        "--out-dir".into(),
        out.display().to_string(),
    ];
    args.extend(
        [
            "--identity",
            "web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
            "--identity-addr",
            &service.to_string(),
            "--admin-addr",
            "127.0.0.1:0",
            "--token-file",
            &dir.path().join("token").display().to_string(),
            "--trust-anchors",
            &dir.path().join("ca.crt").display().to_string(),
        ]
        .map(String::from),
    );
    let proxy = Proxy::spawn(&args);
    let admin = proxy.wait_for("admin on http://");

    // No certificate yet: not ready, no files, failures counted.
    let (status, body) = http_get(&admin, "/ready");
    assert_eq!(status, 503, "{body}");
    assert!(!out.join("tls.crt").exists());
    eventually("a counted failure", || {
        http_get(&admin, "/metrics")
            .1
            .contains("lanyard_proxy_identity_refresh_failures_total{code=")
    });
    assert_eq!(http_get(&admin, "/live").0, 200);

    // The issuer arrives: the agent's next retry succeeds.
    slot.store(Some(Arc::new(issuer)));
    eventually("readiness", || http_get(&admin, "/ready").0 == 200);
    assert!(
        out.join("ca.crt").exists(),
        "ready means the files are there"
    );

    let key =
        SigningKey::from_pem(&std::fs::read(out.join("tls.key")).unwrap(), "tls.key").unwrap();
    let chain =
        Certificate::parse_pem_bundle(&std::fs::read(out.join("tls.crt")).unwrap(), "tls.crt")
            .unwrap();
    let anchors =
        Certificate::parse_pem_bundle(&std::fs::read(out.join("ca.crt")).unwrap(), "ca.crt")
            .unwrap();
    assert!(key.matches_public_key(chain[0].public_key_raw()));
    assert_eq!(key.algorithm(), KeyAlgorithm::EcdsaP256);
    verify_chain(&chain, &anchors, SystemClock.now()).unwrap();
    assert_eq!(
        chain[0].profile().dns_names,
        ["web.emojivoto.serviceaccount.identity.linkerd.cluster.local"]
    );
    assert_eq!(mode(&out.join("tls.key")), 0o600);
    assert_eq!(mode(&out.join("tls.crt")), 0o644);
    assert_eq!(mode(&out), 0o700);
    assert!(
        std::fs::symlink_metadata(out.join("tls.key"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "keys link through ..data, as in a Secret volume"
    );

    let metrics = http_get(&admin, "/metrics").1;
    let expiry = metrics
        .lines()
        .find_map(|l| l.strip_prefix("identity_cert_expiration_timestamp_seconds "))
        .expect("the certificate's expiry");
    assert_eq!(
        expiry.trim().parse::<i64>().unwrap(),
        chain[0].not_after().timestamp(),
        "{metrics}"
    );
    assert!(
        metrics.contains("lanyard_proxy_identity_refreshes_total 1"),
        "{metrics}"
    );
}

#[test]
fn bad_flags_are_refused_with_a_reason() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let base = [
        "--token-file",
        "/nonexistent/token",
        "--trust-anchors",
        "/nonexistent/ca.crt",
        "--admin-addr",
        "127.0.0.1:0",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut all: Vec<&'static str> = base.to_vec();
        all.extend_from_slice(extra);
        all
    };
    let err = run(&with(&["--identity", "web.emojivoto"]));
    assert!(
        err.contains("<serviceaccount>.<namespace>.serviceaccount"),
        "{err}"
    );
    let err = run(&with(&[
        "--identity",
        "web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
        "--outbound",
        "127.0.0.1:0=nowhere",
    ]));
    assert!(err.contains("expected LISTEN=TARGET,IDENTITY"), "{err}");
    let err = run(&with(&[
        "--identity",
        "web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
        "--default-policy",
        "allow-all",
    ]));
    assert!(err.contains("cluster-authenticated"), "{err}");
    let err = run(&with(&[
        "--identity",
        "web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
        "--agent-only",
    ]));
    assert!(err.contains("--out-dir"), "{err}");
    let err = run(&with(&[
        "--identity",
        "web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
        "--agent-only",
        "--out-dir",
        "/tmp/x",
        "--identity-timeout",
        "0s",
    ]));
    assert!(err.contains("not a positive duration"), "{err}");
}

fn policy(allowed: &str, app_port: u16) -> String {
    common::policy_yaml(allowed, &app_port.to_string(), "HTTP/1")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_proxy_processes_carry_traffic_and_follow_policy_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let started = common::Service::start(dir.path(), true).await;
    for (ns, sa) in [("shop", "api"), ("front", "web")] {
        started.token_file(ns, sa, &dir.path().join(format!("{sa}.token")));
    }
    let service = started.addr.to_string();
    let ca = started.ca.clone();

    // The application: says who called.
    let app = axum::Router::new().route(
        "/whoami",
        axum::routing::get(|headers: axum::http::HeaderMap| async move {
            headers
                .get("l5d-client-id")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let api = "api.shop.serviceaccount.identity.linkerd.cluster.local";
    let web = "web.front.serviceaccount.identity.linkerd.cluster.local";
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("api.yaml"), policy(web, app_addr.port())).unwrap();
    let common = |sa: &str| -> Vec<String> {
        [
            "--token-file",
            &dir.path().join(format!("{sa}.token")).display().to_string(),
            "--trust-anchors",
            &ca.display().to_string(),
            "--identity-addr",
            &service,
            "--admin-addr",
            "127.0.0.1:0",
            "--inbound-addr",
            "127.0.0.1:0",
        ]
        .map(String::from)
        .to_vec()
    };
    let mut server_args = common("api");
    server_args.extend(
        [
            "--identity",
            api,
            "--app-addr",
            &app_addr.to_string(),
            "--namespace",
            "shop",
            "--pod-label",
            "app=api",
            "--policy-dir",
            &policy_dir.display().to_string(),
        ]
        .map(String::from),
    );
    let server = Proxy::spawn(&server_args);
    let server_admin = server.wait_for("admin on http://");
    let inbound = server.wait_for("inbound on ");
    let mut client_args = common("web");
    client_args.extend([
        "--identity".to_string(),
        web.to_string(),
        "--namespace".into(),
        "front".into(),
        "--outbound".into(),
        format!("127.0.0.1:0={inbound},{api}"),
    ]);
    let client = Proxy::spawn(&client_args);
    let client_admin = client.wait_for("admin on http://");
    let outbound = client.wait_for("outbound on ");
    let (a, b) = (server_admin.clone(), client_admin.clone());
    tokio::task::spawn_blocking(move || {
        eventually("both proxies ready", || {
            http_get(&a, "/ready").0 == 200 && http_get(&b, "/ready").0 == 200
        })
    })
    .await
    .unwrap();

    let get = |addr: String| tokio::task::spawn_blocking(move || http_get(&addr, "/whoami"));
    let (status, body) = get(outbound.clone()).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with(web), "{body}");
    // Plaintext straight to the inbound port is unauthenticated: 403.
    assert_eq!(get(inbound.clone()).await.unwrap().0, 403);

    // The policy file changes: web is denied, with no restart...
    std::fs::write(policy_dir.join("api.yaml"), policy(api, app_addr.port())).unwrap();
    let o = outbound.clone();
    tokio::task::spawn_blocking(move || {
        eventually("web denied", || http_get(&o, "/whoami").0 == 403)
    })
    .await
    .unwrap();
    // ...a broken file is refused and the last good policy stays...
    std::fs::write(policy_dir.join("api.yaml"), "kind: Server\napiVersion: policy.linkerd.io/v1beta1\nmetadata: {name: x}\nspec: {port: 1}\n").unwrap();
    let a = server_admin.clone();
    tokio::task::spawn_blocking(move || {
        eventually("the refusal counted", || {
            http_get(&a, "/metrics")
                .1
                .contains(r#"lanyard_proxy_policy_reloads_total{result="refused"} 1"#)
        })
    })
    .await
    .unwrap();
    assert_eq!(get(outbound.clone()).await.unwrap().0, 403);
    // ...and web is allowed again.
    std::fs::write(policy_dir.join("api.yaml"), policy(web, app_addr.port())).unwrap();
    let o = outbound.clone();
    tokio::task::spawn_blocking(move || {
        eventually("web allowed", || http_get(&o, "/whoami").0 == 200)
    })
    .await
    .unwrap();
    let metrics = get_metrics(&server_admin).await;
    // Labelled as Linkerd's proxy labels it.
    assert!(
        metrics.lines().any(|l| l.starts_with("inbound_http_authz_allow_total{")
            && l.contains(r#"srv_group="policy.linkerd.io",srv_kind="server",srv_name="api-http","#)
            && l.contains(r#"authz_group="policy.linkerd.io",authz_kind="authorizationpolicy",authz_name="api-clients","#)
            && l.contains(&format!(r#"tls="true",client_id="{web}""#))),
        "{metrics}"
    );
    assert!(
        metrics.contains("identity_cert_expiration_timestamp_seconds"),
        "{metrics}"
    );
    // Both stop on a signal, with status 0, their connections drained.
    let (mut client, mut server) = (client, server);
    let stopped = tokio::task::spawn_blocking(move || (client.stop("TERM"), server.stop("INT")))
        .await
        .unwrap();
    assert!(
        matches!(stopped, (Some(a), Some(b)) if a.success() && b.success()),
        "exit statuses after SIGTERM / SIGINT: {stopped:?}"
    );
}

async fn get_metrics(admin: &str) -> String {
    let admin = admin.to_string();
    tokio::task::spawn_blocking(move || http_get(&admin, "/metrics").1)
        .await
        .unwrap()
}
