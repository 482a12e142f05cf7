//! A trust anchor rotation against a real API server, when
//! `LANYARD_TEST_KUBECONFIG` names a kubeconfig; the test says it was
//! skipped when it is not.
//!
//! A CA ClusterIssuer over a root, an identity issuer Certificate (a CA)
//! it signs, a workload Certificate under that, and a TrustBundle
//! distributing the root. A rotation is asked for with the annotation
//! `lanyard anchor rotate --cluster-issuer` sets; the controller takes it
//! through every phase to Stable, and at the end the new anchor signs,
//! every target and `ca.crt` holds it alone, and every certificate chains
//! to it.

mod cluster;
mod live;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use cluster::{apply_crds, create_namespace, eventually_within, with_cleanup};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use lanyard_crds::api::{
    CaIssuer, Certificate, CertificateSpec, ClusterIssuer, ClusterIssuerSpec, Issuer, IssuerConfig,
    IssuerRef, IssuerSpec,
};
use lanyard_crds::duration::GoDuration;
use lanyard_crds::identity::IdentityDomain;
use lanyard_crds::time::{Clock, SystemClock};
use lanyard_crds::trust_bundle::{
    BundleSource, BundleTarget, NamespaceSelector, TargetKey, TrustBundle, TrustBundleSpec,
};
use lanyard_issuer::{Certificate as X509, KeyAlgorithm, TrustAnchor, verify_chain};
use lanyard_rotator::kube::anchor_rotation::{
    ROTATE_ANNOTATION, ROTATION_ANNOTATION, RotationTiming, record_of,
};
use lanyard_rotator::kube::{Context, client_for, run};
use lanyard_rotator::metrics::Metrics;
use lanyard_trust_bundle::Phase;
use live::{live_config, unique};

const KEY: &str = "ca-bundle.crt";

fn pem_of(secret: &Secret, key: &str) -> Vec<X509> {
    let data = secret.data.as_ref().and_then(|d| d.get(key));
    data.and_then(|b| X509::parse_pem_bundle(&b.0, key).ok())
        .unwrap_or_default()
}

fn ders(certs: &[X509]) -> Vec<Vec<u8>> {
    certs.iter().map(|c| c.der().to_vec()).collect()
}

fn is_ready(certificate: &Certificate) -> bool {
    certificate.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.is_true())
    })
}

fn certificate(namespace: &str, name: &str, spec: CertificateSpec) -> Certificate {
    let mut certificate = Certificate::new(name, spec);
    certificate.metadata.namespace = Some(namespace.into());
    certificate
}

#[tokio::test]
async fn an_anchor_rotates_through_every_phase_and_everything_ends_on_the_new_anchor() {
    let test = "an_anchor_rotates_through_every_phase_and_everything_ends_on_the_new_anchor";
    let Some(config) = live_config(test).await else {
        return;
    };
    let client = Client::try_from(config.clone()).expect("a client from the kubeconfig");
    let controller_client = client_for(config).expect("the controller's client");
    apply_crds(&client).await;
    let trust = unique("lanyard-rot-trust");
    let mesh = unique("lanyard-rot-mesh");
    let issuer_name = unique("lanyard-rot-anchor");
    let bundle_name = unique("lanyard-rot-roots");
    create_namespace(&client, &trust, BTreeMap::new()).await;
    create_namespace(&client, &mesh, BTreeMap::new()).await;

    let body = async {
        let now = SystemClock.now();
        let domain = IdentityDomain::linkerd_default();
        let old =
            TrustAnchor::generate(&domain, TimeDelta::days(365), KeyAlgorithm::EcdsaP256, now)
                .unwrap();
        let old_der = old.certificate().der().to_vec();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &trust);
        let pem = old.certificate().to_pem().into_bytes();
        secrets
            .create(
                &PostParams::default(),
                &Secret {
                    metadata: ObjectMeta {
                        name: Some("anchor".into()),
                        namespace: Some(trust.clone()),
                        ..ObjectMeta::default()
                    },
                    data: Some(BTreeMap::from([
                        ("tls.crt".to_string(), ByteString(pem.clone())),
                        (
                            "tls.key".to_string(),
                            ByteString(old.key().to_pkcs8_pem().as_bytes().to_vec()),
                        ),
                        ("ca.crt".to_string(), ByteString(pem)),
                    ])),
                    type_: Some("kubernetes.io/tls".into()),
                    ..Secret::default()
                },
            )
            .await
            .expect("creating the anchor's CA Secret");
        Api::<ClusterIssuer>::all(client.clone())
            .create(
                &PostParams::default(),
                &ClusterIssuer::new(
                    &issuer_name,
                    ClusterIssuerSpec {
                        config: IssuerConfig {
                            ca: Some(CaIssuer {
                                secret_name: "anchor".into(),
                            }),
                            self_signed: None,
                        },
                    },
                ),
            )
            .await
            .expect("creating the ClusterIssuer");
        // The identity issuer, as Linkerd's cert-manager guide has it.
        let mut spec = lanyard_rotator::local::identity_issuer_certificate(&domain).spec;
        spec.issuer_ref = IssuerRef {
            name: issuer_name.clone(),
            kind: Some("ClusterIssuer".into()),
            group: None,
        };
        let certificates: Api<Certificate> = Api::namespaced(client.clone(), &mesh);
        certificates
            .create(
                &PostParams::default(),
                &certificate(&mesh, "identity-issuer", spec),
            )
            .await
            .expect("creating the identity issuer Certificate");
        let mut issuer = Issuer::new(
            "identity",
            IssuerSpec {
                config: IssuerConfig {
                    ca: Some(CaIssuer {
                        secret_name: "linkerd-identity-issuer".into(),
                    }),
                    self_signed: None,
                },
            },
        );
        issuer.metadata.namespace = Some(mesh.clone());
        Api::<Issuer>::namespaced(client.clone(), &mesh)
            .create(&PostParams::default(), &issuer)
            .await
            .expect("creating the Issuer");
        let mut leaf = CertificateSpec::new(
            "web-tls",
            IssuerRef {
                name: "identity".into(),
                kind: None,
                group: None,
            },
        );
        leaf.dns_names = vec!["web.mesh.svc.cluster.local".into()];
        leaf.duration = Some(GoDuration::from_hours(24));
        certificates
            .create(&PostParams::default(), &certificate(&mesh, "web", leaf))
            .await
            .expect("creating the workload Certificate");
        Api::<TrustBundle>::all(client.clone())
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
                            namespace_selector: Some(NamespaceSelector::namespace(&mesh)),
                        },
                        propagation_delay: Some(GoDuration::from_secs(1)),
                    },
                ),
            )
            .await
            .expect("creating the TrustBundle");

        let ctx = Arc::new(
            Context::new(controller_client, SystemClock, Arc::new(Metrics::new()))
                .with_cluster_resource_namespace(&trust)
                .with_trust_bundles(true)
                .with_rotation_timing(RotationTiming {
                    leaf_lifetime: TimeDelta::seconds(2),
                    skew: TimeDelta::seconds(1),
                }),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let controller = tokio::spawn(run(ctx.clone(), None, async {
            let _ = stopped.await;
        }));
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &mesh);
        let bundle_ders = || async {
            config_maps
                .get_opt(&bundle_name)
                .await
                .ok()
                .flatten()
                .and_then(|c| c.data?.get(KEY).cloned())
                .and_then(|pem| X509::parse_pem_bundle(pem.as_bytes(), KEY).ok())
                .map(|certs| ders(&certs))
        };
        eventually_within(
            "both Certificates are Ready and the bundle written",
            60,
            || async {
                let all = certificates.list(&Default::default()).await.unwrap();
                all.items.len() == 2
                    && all.items.iter().all(is_ready)
                    && bundle_ders().await == Some(vec![old_der.clone()])
            },
        )
        .await;
        eventually_within("the anchor's rotation record says Stable", 30, || async {
            secrets
                .get("anchor")
                .await
                .ok()
                .and_then(|s| record_of(&s))
                .is_some_and(|r| r.rotation.phase == Phase::Stable)
        })
        .await;

        // Ask, as `lanyard anchor rotate --cluster-issuer` does.
        let asked = serde_json::json!({
            "metadata": { "annotations": { ROTATE_ANNOTATION: "2026-12-01T00:00:00Z" } }
        });
        secrets
            .patch("anchor", &PatchParams::default(), &Patch::Merge(&asked))
            .await
            .expect("annotating the CA Secret");

        let mut phases = vec![Phase::Stable];
        let mut saw_both = false;
        for _ in 0..240 {
            let secret = secrets.get("anchor").await.unwrap();
            let record = record_of(&secret).expect("a rotation record");
            if phases.last() != Some(&record.rotation.phase) {
                phases.push(record.rotation.phase);
            }
            if bundle_ders().await.is_some_and(|d| d.len() == 2) {
                saw_both = true;
            }
            if record.rotation.phase == Phase::Stable && record.rotation.completed == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Brief phases may pass between two polls; those seen come in order.
        let order = |p: &Phase| Phase::ALL.iter().position(|q| q == p).unwrap();
        let (last, middle) = phases.split_last().unwrap();
        assert_eq!(*last, Phase::Stable, "ends Stable: {phases:?}");
        assert!(
            middle.windows(2).all(|w| order(&w[0]) < order(&w[1]))
                && middle.contains(&Phase::Prepared),
            "phases in order: {phases:?}"
        );
        assert!(saw_both, "the bundle held both anchors during the rotation");

        let secret = secrets.get("anchor").await.unwrap();
        let annotations = secret.annotations();
        assert!(
            !annotations.contains_key(ROTATE_ANNOTATION),
            "the request is used up"
        );
        assert!(annotations.contains_key(ROTATION_ANNOTATION));
        let signer = pem_of(&secret, "tls.crt");
        let new_der = signer[0].der().to_vec();
        assert_ne!(new_der, old_der, "a new anchor signs");
        assert_eq!(ders(&pem_of(&secret, "ca.crt")), vec![new_der.clone()]);
        assert!(
            secrets.get_opt("anchor-next").await.unwrap().is_none(),
            "the prepared copy is gone"
        );
        let anchors = signer;
        eventually_within(
            "the bundle and every ca.crt hold the new anchor alone",
            30,
            || async {
                let mesh_secrets: Api<Secret> = Api::namespaced(client.clone(), &mesh);
                let mut ok = bundle_ders().await == Some(vec![new_der.clone()]);
                for name in ["linkerd-identity-issuer", "web-tls"] {
                    let s = mesh_secrets.get(name).await.unwrap();
                    ok &= ders(&pem_of(&s, "ca.crt")) == vec![new_der.clone()];
                }
                ok
            },
        )
        .await;
        let mesh_secrets: Api<Secret> = Api::namespaced(client.clone(), &mesh);
        let now = SystemClock.now();
        let issuer_chain = pem_of(
            &mesh_secrets.get("linkerd-identity-issuer").await.unwrap(),
            "tls.crt",
        );
        verify_chain(&issuer_chain, &anchors, now)
            .expect("the identity issuer chains to the new anchor");
        let mut leaf_chain = pem_of(&mesh_secrets.get("web-tls").await.unwrap(), "tls.crt");
        leaf_chain.extend(issuer_chain);
        verify_chain(&leaf_chain, &anchors, now).expect("the workload chains to the new anchor");

        let _ = stop.send(());
        let _ = controller.await;
    };
    let cleanup = async {
        for ns in [&trust, &mesh] {
            let _ = Api::<Namespace>::all(client.clone())
                .delete(ns, &DeleteParams::default())
                .await;
        }
        let _ = Api::<ClusterIssuer>::all(client.clone())
            .delete(&issuer_name, &DeleteParams::default())
            .await;
        let _ = Api::<TrustBundle>::all(client.clone())
            .delete(&bundle_name, &DeleteParams::default())
            .await;
    };
    with_cleanup(body, cleanup).await;
}
