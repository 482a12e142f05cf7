//! What the controller's live tests share: Lanyard's CRDs applied,
//! namespaces made and removed, polling, and cleanup after a panic.
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
use kube::{Client, ResourceExt};

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
