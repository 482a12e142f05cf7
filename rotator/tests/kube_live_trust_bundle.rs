//! The TrustBundle controller against a real API server, when
//! `LANYARD_TEST_KUBECONFIG` names a kubeconfig; the test says it was
//! skipped when it is not.
//!
//! It applies Lanyard's CRDs (server-side apply, field manager
//! `lanyard-test`), works in fresh namespaces selected by a label no other
//! run uses, with a uniquely named ClusterIssuer and TrustBundle, and
//! deletes them afterwards. The controller it runs watches the whole
//! cluster, so point it at a cluster without another Lanyard controller.

mod cluster;
mod live;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use cluster::{apply_crds, create_namespace, delete_namespace, eventually, with_cleanup};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use lanyard_crds::api::{CaIssuer, ClusterIssuer, ClusterIssuerSpec, IssuerConfig, IssuerRef};
use lanyard_crds::identity::IdentityDomain;
use lanyard_crds::time::{Clock, SystemClock};
use lanyard_crds::trust_bundle::{
    BundleSource, BundleTarget, NamespaceSelector, TargetKey, TrustBundle, TrustBundleSpec,
};
use lanyard_issuer::{Certificate as X509, KeyAlgorithm, TrustAnchor};
use lanyard_rotator::kube::{BUNDLE_LABEL, Context, client_for, run};
use lanyard_rotator::metrics::Metrics;
use live::{live_config, unique};

const KEY: &str = "ca-bundle.crt";
const SELECT_LABEL: &str = "lanyard.dev/live-trust-bundle";

/// The CA Secret of an anchor rotation: `tls.crt`/`tls.key` the signing
/// anchor, `ca.crt` every live anchor.
fn ca_secret(namespace: &str, name: &str, signing: &TrustAnchor, live: &[&X509]) -> Secret {
    let ca_crt: String = live.iter().map(|a| a.to_pem()).collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_string(),
                ByteString(signing.certificate().to_pem().into_bytes()),
            ),
            (
                "tls.key".to_string(),
                ByteString(signing.key().to_pkcs8_pem().as_bytes().to_vec()),
            ),
            ("ca.crt".to_string(), ByteString(ca_crt.into_bytes())),
        ])),
        type_: Some("kubernetes.io/tls".into()),
        ..Secret::default()
    }
}

/// The DERs of the anchors the ConfigMap `namespace/name` holds under
/// [`KEY`]; `None` while it does not exist or holds no PEM.
async fn bundle_in(client: &Client, namespace: &str, name: &str) -> Option<Vec<Vec<u8>>> {
    let config_map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .ok()??;
    let pem = config_map.data?.get(KEY)?.clone();
    let anchors = X509::parse_pem_bundle(pem.as_bytes(), KEY).ok()?;
    Some(anchors.iter().map(|a| a.der().to_vec()).collect())
}

/// The bundle's Ready status and reason, anchor count and target
/// namespaces.
async fn bundle_state(
    bundles: &Api<TrustBundle>,
    name: &str,
) -> Option<(String, String, Option<i64>, Vec<String>)> {
    let status = bundles.get(name).await.ok()?.status?;
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((
        ready.status.clone(),
        ready.reason.clone().unwrap_or_default(),
        status.anchor_count,
        status.target_namespaces.clone(),
    ))
}

#[tokio::test]
async fn a_trust_bundle_follows_its_issuers_live_anchors_into_every_selected_namespace() {
    let test = "a_trust_bundle_follows_its_issuers_live_anchors_into_every_selected_namespace";
    let Some(config) = live_config(test).await else {
        return;
    };
    let client = Client::try_from(config.clone()).expect("a client from the kubeconfig");
    let controller_client = client_for(config).expect("the controller's client");
    apply_crds(&client).await;
    let trust_namespace = unique("lanyard-tb-trust");
    let selected = [unique("lanyard-tb-a"), unique("lanyard-tb-b")];
    let unselected = unique("lanyard-tb-other");
    let label = unique("mesh");
    let issuer_name = unique("lanyard-tb-anchor");
    let bundle_name = unique("lanyard-tb-roots");
    create_namespace(&client, &trust_namespace, BTreeMap::new()).await;
    for namespace in &selected {
        create_namespace(
            &client,
            namespace,
            BTreeMap::from([(SELECT_LABEL.to_string(), label.clone())]),
        )
        .await;
    }
    create_namespace(&client, &unselected, BTreeMap::new()).await;

    let body = async {
        let now = SystemClock.now();
        let domain = IdentityDomain::linkerd_default();
        let old = TrustAnchor::generate(
            &domain,
            TimeDelta::days(365),
            KeyAlgorithm::EcdsaP256,
            now - TimeDelta::days(1),
        )
        .unwrap();
        let new =
            TrustAnchor::generate(&domain, TimeDelta::days(365), KeyAlgorithm::EcdsaP256, now)
                .unwrap();
        let (old_der, new_der) = (
            old.certificate().der().to_vec(),
            new.certificate().der().to_vec(),
        );
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &trust_namespace);
        secrets
            .create(
                &PostParams::default(),
                &ca_secret(
                    &trust_namespace,
                    "trust-anchor",
                    &new,
                    &[new.certificate(), old.certificate()],
                ),
            )
            .await
            .expect("creating the CA Secret");
        Api::<ClusterIssuer>::all(client.clone())
            .create(
                &PostParams::default(),
                &ClusterIssuer::new(
                    &issuer_name,
                    ClusterIssuerSpec {
                        config: IssuerConfig {
                            ca: Some(CaIssuer {
                                secret_name: "trust-anchor".into(),
                            }),
                            self_signed: None,
                        },
                    },
                ),
            )
            .await
            .expect("creating the ClusterIssuer");
        let bundles: Api<TrustBundle> = Api::all(client.clone());
        bundles
            .create(
                &PostParams::default(),
                &TrustBundle::new(
                    &bundle_name,
                    TrustBundleSpec {
                        sources: vec![BundleSource {
                            issuer_ref: Some(IssuerRef {
                                name: issuer_name.clone(),
                                kind: Some("ClusterIssuer".into()),
                                group: None,
                            }),
                            ..BundleSource::default()
                        }],
                        target: BundleTarget {
                            config_map: TargetKey { key: KEY.into() },
                            secret: None,
                            namespace_selector: Some(NamespaceSelector {
                                match_labels: BTreeMap::from([(
                                    SELECT_LABEL.to_string(),
                                    label.clone(),
                                )]),
                            }),
                        },
                        propagation_delay: None,
                    },
                ),
            )
            .await
            .expect("creating the TrustBundle");

        let ctx = Arc::new(
            Context::new(controller_client, SystemClock, Arc::new(Metrics::new()))
                .with_cluster_resource_namespace(&trust_namespace)
                .with_trust_bundles(true),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let controller = tokio::spawn(run(ctx.clone(), None, async {
            let _ = stopped.await;
        }));

        // Both anchors, oldest first, in both selected namespaces.
        let both = vec![old_der.clone(), new_der.clone()];
        for namespace in &selected {
            eventually(&format!("{namespace} holds both anchors"), || async {
                bundle_in(&client, namespace, &bundle_name).await == Some(both.clone())
            })
            .await;
        }
        let mut targets = selected.to_vec();
        targets.sort();
        eventually("the bundle is Ready with 2 anchors", || async {
            bundle_state(&bundles, &bundle_name).await
                == Some(("True".into(), "Synced".into(), Some(2), targets.clone()))
        })
        .await;
        assert_eq!(
            bundle_in(&client, &unselected, &bundle_name).await,
            None,
            "an unselected namespace gets no bundle"
        );
        let written = Api::<ConfigMap>::namespaced(client.clone(), &selected[0])
            .get(&bundle_name)
            .await
            .unwrap();
        assert_eq!(
            written.labels().get(BUNDLE_LABEL),
            Some(&bundle_name),
            "the target carries the bundle's label"
        );
        let bundle = bundles.get(&bundle_name).await.unwrap();
        assert!(
            written
                .owner_references()
                .iter()
                .any(|o| o.kind == "TrustBundle"
                    && Some(&o.uid) == bundle.metadata.uid.as_ref()
                    && o.controller == Some(true)),
            "{:?}",
            written.owner_references()
        );
        let first_update = bundle.status.unwrap().last_update_time;
        assert!(first_update.is_some());

        // The rotation ends: ca.crt holds the new anchor only, and the
        // ConfigMaps follow.
        secrets
            .replace(
                "trust-anchor",
                &PostParams::default(),
                &ca_secret(&trust_namespace, "trust-anchor", &new, &[new.certificate()]),
            )
            .await
            .expect("rewriting the CA Secret");
        for namespace in &selected {
            eventually(
                &format!("{namespace} holds the new anchor only"),
                || async {
                    bundle_in(&client, namespace, &bundle_name).await == Some(vec![new_der.clone()])
                },
            )
            .await;
        }
        eventually("the bundle is Ready with 1 anchor", || async {
            bundle_state(&bundles, &bundle_name).await
                == Some(("True".into(), "Synced".into(), Some(1), targets.clone()))
        })
        .await;
        let bundle = bundles.get(&bundle_name).await.unwrap();
        assert!(bundle.status.unwrap().last_update_time >= first_update);

        // A target deleted by hand is written back.
        Api::<ConfigMap>::namespaced(client.clone(), &selected[1])
            .delete(&bundle_name, &DeleteParams::default())
            .await
            .expect("deleting a target by hand");
        eventually("the deleted target is written back", || async {
            bundle_in(&client, &selected[1], &bundle_name).await == Some(vec![new_der.clone()])
        })
        .await;

        // A selected namespace is deleted (without a controller manager it
        // stays Terminating): it leaves the targets, the bundle stays Ready.
        delete_namespace(&client, &selected[0]).await;
        eventually("the deleted namespace left the targets", || async {
            bundle_state(&bundles, &bundle_name).await
                == Some((
                    "True".into(),
                    "Synced".into(),
                    Some(1),
                    vec![selected[1].clone()],
                ))
        })
        .await;
        // Settled: a later look keeps it so.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            bundle_state(&bundles, &bundle_name).await,
            Some((
                "True".into(),
                "Synced".into(),
                Some(1),
                vec![selected[1].clone()]
            ))
        );

        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(30), controller)
            .await
            .expect("the controller stops on shutdown")
            .expect("the controller task did not panic")
            .expect("the controller ran without error");
    };
    with_cleanup(body, async {
        if let Err(e) = Api::<TrustBundle>::all(client.clone())
            .delete(&bundle_name, &DeleteParams::default())
            .await
        {
            eprintln!("cleanup: deleting TrustBundle {bundle_name}: {e}");
        }
        if let Err(e) = Api::<ClusterIssuer>::all(client.clone())
            .delete(&issuer_name, &DeleteParams::default())
            .await
        {
            eprintln!("cleanup: deleting ClusterIssuer {issuer_name}: {e}");
        }
        for namespace in selected.iter().chain([&unselected, &trust_namespace]) {
            delete_namespace(&client, namespace).await;
        }
    })
    .await;
}
