//! `lanyard install` into a real API server (`LANYARD_TEST_KUBECONFIG`,
//! with `kubectl` from `LANYARD_TEST_KUBECTL` or the PATH): the manifests
//! apply server-side (the API server checks every schema), and the real
//! binaries, run outside the cluster under the chart's ServiceAccounts
//! (kubeconfigs holding TokenRequest tokens), work with exactly the
//! chart's RBAC: the controller makes the anchor and the issuer and
//! distributes the trust bundle, the identity service answers Certify for
//! a token made with the TokenRequest API, `lanyard check` agrees, and
//! killing the active controller hands its Lease over. A rule taken away
//! breaks what needs it.
//!
//! The API server has no kubelet, so Pods never run: the Deployments are
//! applied and checked, never ready.

#[path = "../rotator/tests/live/mod.rs"]
mod live;
mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Scratch, eventually_within};

const TEST: &str = "lanyard_install_runs_under_exactly_the_charts_rbac";

struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    fn find() -> Option<Kubectl> {
        let kubeconfig = PathBuf::from(std::env::var_os(live::ENV).filter(|p| !p.is_empty())?);
        let binary = std::env::var_os("LANYARD_TEST_KUBECTL")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("kubectl"));
        Some(Kubectl { binary, kubeconfig })
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut child = Command::new(&self.binary)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}; set LANYARD_TEST_KUBECTL", self.binary.display()));
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let output = child.wait_with_output().unwrap();
        Out {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into(),
            stderr: String::from_utf8_lossy(&output.stderr).into(),
        }
    }

    /// Runs and insists it worked.
    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        assert!(out.ok, "kubectl {}: {}", args.join(" "), out.stderr);
        out.stdout
    }

    fn get_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.run(&all, None);
        out.ok.then(|| serde_json::from_str(&out.stdout).unwrap())
    }

    /// A kubeconfig for the ServiceAccount `namespace/name`: the admin
    /// kubeconfig's cluster, with a TokenRequest token.
    fn kubeconfig_for(&self, scratch: &Scratch, namespace: &str, name: &str) -> PathBuf {
        let token = self.ok(
            &["create", "token", name, "-n", namespace, "--duration", "2h"],
            None,
        );
        let view: serde_json::Value = serde_json::from_str(&self.ok(
            &[
                "config",
                "view",
                "--raw",
                "--minify",
                "--flatten",
                "-o",
                "json",
            ],
            None,
        ))
        .unwrap();
        let cluster = &view["clusters"][0]["cluster"];
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": name, "user": {"token": token.trim()}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": name, "namespace": namespace}}],
            "current-context": "c",
        });
        let file = format!("{name}.kubeconfig");
        scratch.write(&file, config.to_string());
        scratch.path(&file)
    }
}

/// `lanyard` with `args`, stdout captured, for piping into kubectl.
fn lanyard_stdout(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "lanyard {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A running `lanyard` process under a ServiceAccount's kubeconfig, its
/// stderr collected.
struct Process {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Process {
    fn start(kubeconfig: &PathBuf, pod_name: &str, args: &[&str]) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", pod_name)
            .env("LANYARD_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("POD_NAMESPACE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        support::keep_reading(child.stderr.take().unwrap(), log.clone());
        Process { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The address after `prefix` in its log, once printed.
    fn address_after(&self, prefix: &str) -> String {
        let mut found = None;
        eventually_within(
            &format!("`{prefix}` in the log"),
            Duration::from_secs(30),
            || {
                let log = self.log();
                found = log.find(prefix).and_then(|at| {
                    let rest = &log[at + prefix.len()..];
                    let end = rest.find(|c: char| c == '/' || c == ';' || c.is_whitespace())?;
                    Some(rest[..end].to_string())
                });
                found.is_some()
            },
        );
        found.unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes what the install made outside its namespace, and the namespace.
struct Cleanup<'a> {
    kubectl: &'a Kubectl,
    namespace: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        // This API server may run no namespace controller: what is in the
        // namespace is deleted first, so no later check sees it.
        let _ = self.kubectl.run(
            &[
                "delete",
                "certificates.lanyard.dev,issuers.lanyard.dev",
                "--all",
                "-n",
                &self.namespace,
                "--wait=false",
            ],
            None,
        );
        for object in [
            "clusterrole/lanyard-controller",
            "clusterrolebinding/lanyard-controller",
            "clusterrole/lanyard-identity",
            "clusterrolebinding/lanyard-identity",
            "clusterissuers.lanyard.dev/linkerd-trust-anchor",
            "trustbundles.lanyard.dev/linkerd-identity-trust-roots",
        ] {
            let _ = self.kubectl.run(
                &["delete", object, "--ignore-not-found", "--wait=false"],
                None,
            );
        }
        let _ = self.kubectl.run(
            &["delete", "namespace", &self.namespace, "--wait=false"],
            None,
        );
    }
}

type IdentityClient =
    lanyard_identity_api::identity_client::IdentityClient<tonic::transport::Channel>;

/// Certify for `web.<namespace>` with `token`, trusting `anchors`.
async fn certify(
    addr: &str,
    anchors: &str,
    namespace: &str,
    token: &str,
) -> Result<lanyard_identity_api::CertifyResponse, tonic::Status> {
    use lanyard_crds::identity::{Identity, IdentityDomain};
    use tonic::transport::{Certificate as TlsCa, Channel, ClientTlsConfig};
    let domain = IdentityDomain::new(namespace, "cluster.local".parse().unwrap()).unwrap();
    let web = Identity::new("web", namespace, domain).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(TlsCa::from_pem(anchors))
        .domain_name(format!(
            "linkerd-identity.{namespace}.serviceaccount.identity.{namespace}.cluster.local"
        ));
    let endpoint = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let mut channel = None;
    for _ in 0..100 {
        if let Ok(c) = endpoint.connect().await {
            channel = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut client = IdentityClient::new(channel.expect("the identity service serves TLS"));
    client
        .certify(support::certify_request(&web, token.as_bytes()))
        .await
        .map(|r| r.into_inner())
}

/// Certify, tried every 500 ms (up to 30 times) until its result passes
/// `done`: RBAC changes reach the API server's authorizer after a moment.
async fn certify_until(
    addr: &str,
    anchors: &str,
    namespace: &str,
    token: &str,
    done: impl Fn(&Result<lanyard_identity_api::CertifyResponse, tonic::Status>) -> bool,
) -> Option<Result<lanyard_identity_api::CertifyResponse, tonic::Status>> {
    for _ in 0..30 {
        let result = certify(addr, anchors, namespace, token).await;
        if done(&result) {
            return Some(result);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// What `lanyard check -n namespace` prints, as the admin runs it.
fn lanyard_check(kubectl: &Kubectl, namespace: &str) -> String {
    let check = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["check", "-n", namespace])
        .env("KUBECONFIG", &kubectl.kubeconfig)
        .output()
        .unwrap();
    String::from_utf8_lossy(&check.stdout).into_owned()
}

fn lease_holder(kubectl: &Kubectl, namespace: &str) -> Option<String> {
    kubectl
        .get_json(&["lease", "lanyard-controller", "-n", namespace])
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

fn condition_true(object: &serde_json::Value, kind: &str) -> bool {
    object["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == kind && c["status"] == "True"))
}

#[tokio::test(flavor = "multi_thread")]
async fn lanyard_install_runs_under_exactly_the_charts_rbac() {
    if live::live_config(TEST).await.is_none() {
        return;
    }
    let kubectl = Kubectl::find().expect("LANYARD_TEST_KUBECONFIG is set");
    let scratch = Scratch::new();
    let namespace = live::unique("lanyard-install");
    let _cleanup = Cleanup {
        kubectl: &kubectl,
        namespace: namespace.clone(),
    };

    // The CRDs, then the install, as the README says; server-side, so the
    // API server checks every object against its schema.
    kubectl.ok(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&lanyard_stdout(&["install", "--crds"])),
    );
    kubectl.ok(
        &[
            "wait",
            "--for",
            "condition=established",
            "--timeout",
            "60s",
            "crd/certificates.lanyard.dev",
            "crd/issuers.lanyard.dev",
            "crd/clusterissuers.lanyard.dev",
            "crd/trustbundles.lanyard.dev",
        ],
        None,
    );
    kubectl.ok(&["create", "namespace", &namespace], None);
    let manifests = lanyard_stdout(&["install", "-n", &namespace]);
    let applied = kubectl.ok(&["apply", "--server-side", "-f", "-"], Some(&manifests));
    for object in [
        "deployment.apps/lanyard-controller",
        "deployment.apps/linkerd-identity",
        "service/linkerd-identity",
        "clusterrole.rbac.authorization.k8s.io/lanyard-controller",
        "role.rbac.authorization.k8s.io/linkerd-identity",
        "poddisruptionbudget.policy/linkerd-identity",
        "certificate.lanyard.dev/linkerd-identity-issuer",
        "clusterissuer.lanyard.dev/linkerd-trust-anchor",
        "trustbundle.lanyard.dev/linkerd-identity-trust-roots",
    ] {
        assert!(applied.contains(object), "{object} not applied:\n{applied}");
    }
    // The Service is the one a stock linkerd2-proxy dials.
    let service = kubectl
        .get_json(&["service", "linkerd-identity", "-n", &namespace])
        .unwrap();
    assert_eq!(service["spec"]["ports"][0]["port"], 8080);

    // Two controllers under the chart's ServiceAccount: one works, one waits.
    let controller_config = kubectl.kubeconfig_for(&scratch, &namespace, "lanyard-controller");
    let controller_args = [
        "controller",
        "--namespace",
        &namespace,
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    let mut controllers = vec![
        Some(Process::start(
            &controller_config,
            "controller-a",
            &controller_args,
        )),
        Some(Process::start(
            &controller_config,
            "controller-b",
            &controller_args,
        )),
    ];
    let logs = |controllers: &Vec<Option<Process>>| {
        controllers
            .iter()
            .flatten()
            .map(Process::log)
            .collect::<Vec<_>>()
            .join("\n---\n")
    };

    // The controller makes the anchor (the ClusterIssuer asks for it), the
    // issuer Certificate becomes Ready, and the bundle reaches the namespace.
    eventually_within(
        "the identity issuer Certificate is Ready",
        Duration::from_secs(90),
        || {
            kubectl
                .get_json(&[
                    "certificate.lanyard.dev",
                    "linkerd-identity-issuer",
                    "-n",
                    &namespace,
                ])
                .is_some_and(|c| condition_true(&c, "Ready"))
        },
    );
    let anchor = kubectl
        .get_json(&["secret", "linkerd-trust-anchor", "-n", &namespace])
        .unwrap_or_else(|| panic!("no anchor Secret:\n{}", logs(&controllers)));
    assert!(anchor["data"]["tls.key"].is_string());
    assert!(
        kubectl
            .get_json(&["secret", "linkerd-identity-issuer", "-n", &namespace])
            .is_some()
    );
    let mut anchors = String::new();
    eventually_within(
        "the trust bundle reaches the namespace",
        Duration::from_secs(60),
        || {
            anchors = kubectl
                .get_json(&[
                    "configmap",
                    "linkerd-identity-trust-roots",
                    "-n",
                    &namespace,
                ])
                .and_then(|c| c["data"]["ca-bundle.crt"].as_str().map(str::to_string))
                .unwrap_or_default();
            anchors.contains("BEGIN CERTIFICATE")
        },
    );
    let holder = lease_holder(&kubectl, &namespace).expect("a controller holds the Lease");

    // The identity service under its ServiceAccount: a token made with the
    // TokenRequest API for Linkerd's audience gets a certificate.
    let identity_config = kubectl.kubeconfig_for(&scratch, &namespace, "linkerd-identity");
    let identity = Process::start(
        &identity_config,
        "identity-a",
        &[
            "identity",
            "--namespace",
            &namespace,
            "--addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let addr = identity.address_after("identity service on https://");
    kubectl.ok(&["create", "serviceaccount", "web", "-n", &namespace], None);
    let token = kubectl.ok(
        &[
            "create",
            "token",
            "web",
            "-n",
            &namespace,
            "--audience",
            "identity.l5d.io",
        ],
        None,
    );
    let response = certify(&addr, &anchors, &namespace, token.trim())
        .await
        .unwrap_or_else(|status| panic!("Certify: {status}\n{}", identity.log()));
    assert!(!response.leaf_certificate.is_empty());
    // A token for another audience is refused.
    let wrong = kubectl.ok(&["create", "token", "web", "-n", &namespace], None);
    let refused = certify(&addr, &anchors, &namespace, wrong.trim()).await;
    assert!(
        refused.is_err(),
        "a token for the API server's audience was accepted"
    );

    // `lanyard check` finds the install sound but for the pods, which never
    // run here (no kubelet).
    let report = lanyard_check(&kubectl, &namespace);

    // A rule taken away: without TokenReview, Certify is unavailable; put
    // back, it answers again.
    kubectl.ok(
        &[
            "patch",
            "clusterrole",
            "lanyard-identity",
            "--type",
            "json",
            "-p",
            r#"[{"op":"replace","path":"/rules","value":[]}]"#,
        ],
        None,
    );
    let status = certify_until(&addr, &anchors, &namespace, token.trim(), Result::is_err)
        .await
        .expect("Certify still answered without the TokenReview rule")
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    let without = lanyard_check(&kubectl, &namespace);
    // Applying the install again puts the rule back.
    kubectl.ok(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&manifests),
    );
    let answered = certify_until(&addr, &anchors, &namespace, token.trim(), Result::is_ok).await;
    assert!(
        answered.is_some(),
        "Certify did not come back with the rule:\n{}",
        identity.log()
    );

    // Killing the active controller hands the Lease to the other.
    let active = if holder == "controller-a" { 0 } else { 1 };
    let mut killed = controllers[active].take().unwrap();
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let other = if active == 0 {
        "controller-b"
    } else {
        "controller-a"
    };
    eventually_within(
        "the other controller takes the Lease",
        Duration::from_secs(60),
        || lease_holder(&kubectl, &namespace).as_deref() == Some(other),
    );
    drop(killed);

    // What `lanyard check` said, with the install whole and with the rule
    // taken away.
    let failed: Vec<&str> = report
        .lines()
        .filter(|l| l.contains('×') && !l.starts_with("Status check results"))
        .collect();
    assert_eq!(
        failed,
        [
            "× lanyard-controller Deployment is ready",
            "× linkerd-identity Deployment is ready"
        ],
        "lanyard check failed a check besides the pods':\n{report}"
    );
    assert!(report.contains('✔'), "{report}");
    assert!(
        without
            .lines()
            .any(|l| l.contains('×') && l.contains("tokenreviews")),
        "lanyard check did not see the missing rule:\n{without}"
    );
}
