//! Tests against a real API server: they run when
//! `LANYARD_TEST_KUBECONFIG` names a kubeconfig, and say they are skipped
//! when it does not.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use lanyard_crds::time::{Clock, SystemClock};

pub const ENV: &str = "LANYARD_TEST_KUBECONFIG";

/// The client for `$LANYARD_TEST_KUBECONFIG`, or `None` (after saying the
/// test is skipped) when it is not set.
pub async fn live_client(test: &str) -> Option<Client> {
    let config = live_config(test).await?;
    Some(Client::try_from(config).expect("a client from the kubeconfig"))
}

/// The configuration `$LANYARD_TEST_KUBECONFIG` names, or `None` (after
/// saying the test is skipped) when it is not set.
pub async fn live_config(test: &str) -> Option<kube::Config> {
    let Some(path) = std::env::var_os(ENV).filter(|p| !p.is_empty()) else {
        // Straight to the process's stderr, past the test harness's output
        // capture, so the skip shows in every `cargo test` log.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {ENV} is not set; {test} needs a real API server (set it to a kubeconfig path)"
        );
        return None;
    };
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("reading {ENV}={}: {e}", path.to_string_lossy()));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("loading {ENV}={}: {e}", path.to_string_lossy()));
    Some(config)
}

/// A name no earlier run used.
pub fn unique(prefix: &str) -> String {
    let now = SystemClock.now();
    format!(
        "{prefix}-{}-{}",
        now.timestamp(),
        now.timestamp_subsec_micros() ^ std::process::id()
    )
}

/// Applies Lanyard's CRDs (server-side apply, field manager
/// `lanyard-test`) and waits until each is established.
pub async fn apply_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in lanyard_crds::api::custom_resource_definitions() {
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply("lanyard-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
    }
    for crd in lanyard_crds::api::custom_resource_definitions() {
        let name = crd.name_any();
        eventually(&format!("CRD {name} is established"), || async {
            crds.get(&name).await.ok().is_some_and(|crd| {
                crd.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
        })
        .await;
    }
}

/// Creates the namespace `name` with `labels`.
pub async fn create_namespace(client: &Client, name: &str, labels: BTreeMap<String, String>) {
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
}

/// Deletes the namespace `name`, saying so when it cannot.
pub async fn delete_namespace(client: &Client, name: &str) {
    if let Err(e) = Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
    {
        eprintln!("cleanup: deleting namespace {name}: {e}");
    }
}

/// Polls `check` every half second for up to 60s.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(what, 60, check).await;
}

/// Polls `check` every half second for up to `seconds`.
pub async fn eventually_within<F, Fut>(what: &str, seconds: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..seconds * 2 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Runs `body`, then `cleanup` whether or not `body` panicked.
pub async fn with_cleanup(body: impl Future<Output = ()>, cleanup: impl Future<Output = ()>) {
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    cleanup.await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
