//! `lanyard identity` as a cluster runs it: the real binary, configured by
//! a kubeconfig that points at a small fake API server on loopback. The
//! fake serves the issuer Secret (list and watch) and answers TokenReviews;
//! an agent calls `Certify` over TLS with a token and a CSR, and the leaf
//! it gets verifies with `openssl verify` against the anchor.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Scratch, WEB, http_get};

/// What the fake API server answers with, and what it was asked.
#[derive(Default)]
struct Cluster {
    /// The issuer Secret, as JSON.
    issuer_secret: String,
    /// The bodies of the TokenReviews posted.
    token_reviews: Vec<String>,
    /// Requests for the issuer Secret (lists and watches).
    secret_reads: usize,
    unexpected: Vec<String>,
}

/// The token the fake API server accepts, for `emojivoto/web`.
const WEB_TOKEN: &str = "web-projected-token";

/// Serves one HTTP/1.1 connection of the kube client until it closes.
fn serve_connection(stream: TcpStream, cluster: Arc<Mutex<Cluster>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("a second handle"));
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        if path.starts_with("/api/v1/namespaces/linkerd/secrets") {
            cluster.lock().unwrap().secret_reads += 1;
        }
        if method == "GET"
            && path == "/api/v1/namespaces/linkerd/secrets"
            && query.contains("watch=true")
            && query.contains("fieldSelector=metadata.name%3Dlinkerd-identity-issuer")
        {
            // A watch that stays open with no news.
            let _ = writer.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            );
            let _ = writer.flush();
            loop {
                std::thread::park();
            }
        }
        let (status, answer) = {
            let mut cluster = cluster.lock().unwrap();
            match (method.as_str(), path) {
                // Only the one Secret, selected by name.
                ("GET", "/api/v1/namespaces/linkerd/secrets")
                    if query.contains("fieldSelector=metadata.name%3Dlinkerd-identity-issuer") =>
                {
                    (
                        200,
                        format!(
                            r#"{{"kind":"SecretList","apiVersion":"v1","metadata":{{"resourceVersion":"1"}},"items":[{}]}}"#,
                            cluster.issuer_secret
                        ),
                    )
                }
                ("POST", "/apis/authentication.k8s.io/v1/tokenreviews") => {
                    let review = String::from_utf8(body).expect("a text TokenReview");
                    let status = if review.contains(&format!(r#""token":"{WEB_TOKEN}""#)) {
                        r#"{"authenticated":true,"user":{"username":"system:serviceaccount:emojivoto:web"},"audiences":["identity.l5d.io"]}"#
                    } else {
                        r#"{"authenticated":false,"user":{},"error":"[invalid bearer token, token lookup failed]"}"#
                    };
                    cluster.token_reviews.push(review);
                    (
                        201,
                        format!(
                            r#"{{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{{}},"spec":{{}},"status":{status}}}"#
                        ),
                    )
                }
                _ => {
                    cluster.unexpected.push(format!("{method} {target}"));
                    (
                        404,
                        r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not served here"}"#.to_string(),
                    )
                }
            }
        };
        let body = answer.into_bytes();
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&body).is_err() {
            return;
        }
    }
}

/// Starts the fake API server; returns its address.
fn start_api_server(cluster: Arc<Mutex<Cluster>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let cluster = cluster.clone();
            std::thread::spawn(move || serve_connection(stream, cluster));
        }
    });
    addr
}

/// A running `lanyard identity`, stopped on drop.
struct Identity {
    child: Child,
    addr: String,
    metrics: String,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Identity {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `lanyard` pointed at the fake API server through `kubeconfig` (written
/// by [`start_identity`]), never at an in-cluster one; stderr piped.
fn in_fake_cluster(scratch: &Scratch) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lanyard"));
    command
        .env("KUBECONFIG", scratch.path("kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("POD_NAMESPACE")
        .current_dir(scratch.dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn start_identity(scratch: &Scratch, api_server: &str, extra: &[&str]) -> Identity {
    scratch.write(
        "kubeconfig",
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://{api_server}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
current-context: fake
users:
- name: fake
  user: {{}}
"
        ),
    );
    let mut child = in_fake_cluster(scratch)
        .args([
            "identity",
            "--addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("LANYARD_LOG", "info")
        .spawn()
        .expect("lanyard identity starts");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    let find = |seen: &str, prefix: &str| {
        let start = seen.find(prefix)? + prefix.len();
        let rest = &seen[start..];
        let end = rest.find(|c: char| c == '/' || c == ';' || c.is_whitespace())?;
        Some(rest[..end].to_string())
    };
    let (addr, metrics) = loop {
        let n = stderr.read(&mut buf).expect("read stderr");
        assert!(n > 0, "lanyard identity exited early:\n{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        if let Some(line) = seen.lines().find(|l| l.contains("identity service on"))
            && seen.contains(&format!("{line}\n"))
            && let (Some(addr), Some(metrics)) = (
                find(line, "identity service on https://"),
                find(line, "metrics on http://"),
            )
        {
            break (addr, metrics);
        }
    };
    let log = Arc::new(Mutex::new(seen));
    support::keep_reading(stderr, log.clone());
    Identity {
        child,
        addr,
        metrics,
        stderr: log,
    }
}

type IdentityClient =
    lanyard_identity_api::identity_client::IdentityClient<tonic::transport::Channel>;

/// A gRPC client of `identity` over TLS, trusting the anchor in
/// `ca/ca.crt`; retried until the service has its certificate (once the
/// issuer is loaded).
async fn connect(scratch: &Scratch, identity: &Identity) -> IdentityClient {
    use tonic::transport::{Certificate as TlsCa, Channel, ClientTlsConfig};
    let tls = ClientTlsConfig::new()
        .ca_certificate(TlsCa::from_pem(scratch.read("ca/ca.crt")))
        .domain_name("linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local");
    let endpoint = Channel::from_shared(format!("https://{}", identity.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    for _ in 0..100 {
        if let Ok(channel) = endpoint.connect().await {
            return IdentityClient::new(channel);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the identity service never served a certificate that verifies:\n{}",
        identity.stderr.lock().unwrap()
    );
}

/// Asks for a leaf for `web.emojivoto` with `token`; on success writes
/// the chain to `web.crt` and checks it with `openssl verify`.
async fn certify_web(
    scratch: &Scratch,
    client: &mut IdentityClient,
    token: &[u8],
) -> Result<(), tonic::Status> {
    let web = lanyard_crds::identity::Identity::new(
        "web",
        "emojivoto",
        lanyard_crds::identity::IdentityDomain::linkerd_default(),
    )
    .unwrap();
    assert_eq!(web.to_string(), WEB);
    let response = client
        .certify(support::certify_request(&web, token))
        .await?
        .into_inner();
    let mut pem = lanyard_issuer::Certificate::from_der(&response.leaf_certificate, "leaf")
        .unwrap()
        .to_pem();
    for der in &response.intermediate_certificates {
        pem.push_str(
            &lanyard_issuer::Certificate::from_der(der, "issuer")
                .unwrap()
                .to_pem(),
        );
    }
    scratch.write("web.crt", pem);
    scratch
        .openssl(&[
            "verify",
            "-CAfile",
            "ca/ca.crt",
            "-untrusted",
            "web.crt",
            "web.crt",
        ])
        .success();
    assert!(scratch.x509_text("web.crt").contains(&format!("DNS:{WEB}")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn lanyard_identity_signs_for_the_service_account_the_api_server_names_with_the_issuer_from_its_secret()
 {
    let scratch = Scratch::new();
    scratch.ca_init("ca", &[]).success();
    // Base64, as the API server sends Secret data.
    let secret_data = |name: &str| {
        scratch
            .openssl(&["base64", "-A", "-in", name])
            .success()
            .stdout
            .trim()
            .to_string()
    };
    let cluster = Arc::new(Mutex::new(Cluster {
        issuer_secret: format!(
            r#"{{"kind":"Secret","apiVersion":"v1","metadata":{{"name":"linkerd-identity-issuer","namespace":"linkerd","resourceVersion":"1"}},"type":"kubernetes.io/tls","data":{{"tls.crt":"{}","tls.key":"{}","ca.crt":"{}"}}}}"#,
            secret_data("ca/issuer.crt"),
            secret_data("ca/issuer.key"),
            secret_data("ca/ca.crt"),
        ),
        ..Cluster::default()
    }));
    let api_server = start_api_server(cluster.clone());
    let identity = start_identity(&scratch, &api_server, &[]);
    let mut client = connect(&scratch, &identity).await;

    // A token read from a file, newline and all.
    if let Err(status) =
        certify_web(&scratch, &mut client, format!("{WEB_TOKEN}\n").as_bytes()).await
    {
        panic!(
            "Certify failed: {status:?}\n{}",
            identity.stderr.lock().unwrap()
        );
    }
    let refused = certify_web(
        &scratch,
        &mut client,
        b"a-token-the-api-server-does-not-know",
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("invalid bearer token"),
        "{refused:?}"
    );

    {
        let cluster = cluster.lock().unwrap();
        assert_eq!(cluster.token_reviews.len(), 2);
        let review = &cluster.token_reviews[0];
        for needle in [
            r#""kind":"TokenReview""#.to_string(),
            r#""audiences":["identity.l5d.io"]"#.to_string(),
            format!(r#""token":"{WEB_TOKEN}""#),
        ] {
            assert!(review.contains(&needle), "`{needle}` missing from {review}");
        }
        assert!(
            cluster.unexpected.is_empty(),
            "unexpected requests: {:?}",
            cluster.unexpected
        );
    }

    let metrics = http_get(&identity.metrics, "/metrics");
    for needle in [
        "lanyard_identity_certify_total{code=\"OK\"} 1",
        "lanyard_identity_certify_total{code=\"UNAUTHENTICATED\"} 1",
        "lanyard_identity_issuer_reloads_total{result=\"loaded\"} 1",
    ] {
        assert!(
            metrics.contains(needle),
            "`{needle}` missing from:\n{metrics}"
        );
    }
    let log = identity.stderr.lock().unwrap().clone();
    assert!(
        log.contains("Secret linkerd/linkerd-identity-issuer"),
        "the log names where the issuer came from:\n{log}"
    );
    assert!(!log.contains(WEB_TOKEN), "tokens are never logged:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_issuer_dir_the_issuer_comes_from_the_mounted_files_and_no_secret_is_read() {
    let scratch = Scratch::new();
    scratch.ca_init("ca", &[]).success();
    std::fs::create_dir(scratch.path("issuer")).unwrap();
    for (from, to) in [
        ("ca/issuer.crt", "issuer/tls.crt"),
        ("ca/issuer.key", "issuer/tls.key"),
        ("ca/ca.crt", "issuer/ca.crt"),
    ] {
        std::fs::copy(scratch.path(from), scratch.path(to)).unwrap();
    }
    let cluster = Arc::new(Mutex::new(Cluster::default()));
    let api_server = start_api_server(cluster.clone());
    let identity = start_identity(&scratch, &api_server, &["--issuer-dir", "issuer"]);
    let mut client = connect(&scratch, &identity).await;
    if let Err(status) = certify_web(&scratch, &mut client, WEB_TOKEN.as_bytes()).await {
        panic!(
            "Certify failed: {status:?}\n{}",
            identity.stderr.lock().unwrap()
        );
    }
    let cluster = cluster.lock().unwrap();
    assert_eq!(
        cluster.secret_reads, 0,
        "the Secret is not read through the API"
    );
    assert_eq!(cluster.token_reviews.len(), 1, "tokens are still reviewed");
    assert!(
        cluster.unexpected.is_empty(),
        "unexpected requests: {:?}",
        cluster.unexpected
    );
}

#[test]
fn sigterm_or_sigint_stops_lanyard_identity_and_lanyard_controller_with_status_0() {
    let scratch = Scratch::new();
    let api_server = start_api_server(Arc::new(Mutex::new(Cluster::default())));
    let mut identity = start_identity(&scratch, &api_server, &[]);
    support::send_signal(&identity.child, "TERM");
    let status = support::wait_exit(&mut identity.child, Duration::from_secs(15));
    let log = identity.stderr.lock().unwrap().clone();
    assert!(
        status.is_some_and(|s| s.success()),
        "lanyard identity after SIGTERM: {status:?}\n{log}"
    );

    // The controller, with the fake API server answering 404 to all it
    // watches (so its watches fail and back off), stops on SIGINT too.
    let mut controller = in_fake_cluster(&scratch)
        .args([
            "controller",
            "--no-leader-elect",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .spawn()
        .expect("lanyard controller starts");
    let mut stderr = controller.stderr.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while !seen.contains("controller starting") {
        let n = stderr.read(&mut buf).unwrap();
        assert!(n > 0, "lanyard controller exited early:\n{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    support::keep_reading(stderr, Arc::new(Mutex::new(seen)));
    support::send_signal(&controller, "INT");
    let status = support::wait_exit(&mut controller, Duration::from_secs(15));
    let _ = controller.kill();
    assert!(
        status.is_some_and(|s| s.success()),
        "lanyard controller after SIGINT: {status:?}"
    );
}
