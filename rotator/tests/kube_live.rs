//! The Kubernetes shell against a real API server, when
//! `LANYARD_TEST_KUBECONFIG` names a kubeconfig (a kind or k3d cluster is
//! enough); each test says it was skipped when it is not set.
//!
//! The tests apply Lanyard's CRDs (server-side apply, field manager
//! `lanyard-test`), work in a fresh namespace and a uniquely named
//! ClusterIssuer, and delete both afterwards. The controller they run
//! watches the whole cluster, so point them at a cluster without another
//! Lanyard controller.

mod cluster;
mod live;
mod support;

use std::sync::Arc;
use std::time::Duration;

use cluster::{apply_crds, create_namespace, delete_namespace, eventually, with_cleanup};
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use lanyard_crds::api::{Certificate, ClusterIssuer, ClusterIssuerSpec};
use lanyard_crds::time::{Clock, SystemClock};
use lanyard_issuer::Certificate as X509;
use lanyard_rotator::kube::{Context, LeaderElection, LeaseDecision, LeaseLock, client_for, run};
use lanyard_rotator::metrics::Metrics;
use lanyard_rotator::secret::SecretData;
use live::{live_client, live_config, unique};
use support::{anchor_secret, ca_config, identity_issuer_spec};

fn secret(namespace: &str, name: &str, data: &SecretData, type_: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        data: Some(
            data.data
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                .collect(),
        ),
        type_: Some(type_.into()),
        ..Secret::default()
    }
}

fn cluster_issuer_ready(issuer: &ClusterIssuer) -> bool {
    issuer.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.is_true())
    })
}

fn ready(certificate: &Certificate) -> bool {
    certificate.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.is_true())
    })
}

#[tokio::test]
async fn a_certificate_from_a_ca_cluster_issuer_becomes_ready_in_a_real_cluster() {
    let Some(config) =
        live_config("a_certificate_from_a_ca_cluster_issuer_becomes_ready_in_a_real_cluster").await
    else {
        return;
    };
    // The test's own requests go through kube-rs' client; the controller's
    // through its own, which speaks HTTP/2 to a real API server.
    let client = Client::try_from(config.clone()).expect("a client from the kubeconfig");
    let controller_client = client_for(config).expect("the controller's client");
    apply_crds(&client).await;
    let namespace = unique("lanyard-live");
    let issuer_name = unique("lanyard-live-anchor");
    create_namespace(&client, &namespace, Default::default()).await;

    let body = async {
        let now = SystemClock.now();
        let anchor = anchor_secret("Lanyard Live Test Anchor", now);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        secrets
            .create(
                &PostParams::default(),
                &secret(&namespace, "trust-anchor", &anchor, "kubernetes.io/tls"),
            )
            .await
            .expect("creating the anchor Secret");
        Api::<ClusterIssuer>::all(client.clone())
            .create(
                &PostParams::default(),
                &ClusterIssuer::new(
                    &issuer_name,
                    ClusterIssuerSpec {
                        config: ca_config("trust-anchor"),
                    },
                ),
            )
            .await
            .expect("creating the ClusterIssuer");

        // Two Certificates: one into a new Secret, one into a Secret that
        // already holds a key somebody else wrote, which must survive.
        let mut theirs = SecretData::default();
        theirs
            .data
            .insert("extra".into(), b"not lanyard's".to_vec());
        secrets
            .create(
                &PostParams::default(),
                &secret(&namespace, "shared-tls", &theirs, "Opaque"),
            )
            .await
            .expect("creating the shared Secret");
        let certificates: Api<Certificate> = Api::namespaced(client.clone(), &namespace);
        for (name, secret_name) in [
            ("identity-issuer", "identity-issuer"),
            ("shared", "shared-tls"),
        ] {
            let mut spec = identity_issuer_spec();
            spec.issuer_ref.name = issuer_name.clone();
            spec.secret_name = secret_name.into();
            certificates
                .create(&PostParams::default(), &Certificate::new(name, spec))
                .await
                .unwrap_or_else(|e| panic!("creating Certificate {name}: {e}"));
        }

        let ctx = Arc::new(
            Context::new(controller_client, SystemClock, Arc::new(Metrics::new()))
                .with_cluster_resource_namespace(&namespace),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let controller = tokio::spawn(run(
            ctx.clone(),
            Some(LeaderElection::new(&namespace, "live-test")),
            async {
                let _ = stopped.await;
            },
        ));

        for name in ["identity-issuer", "shared"] {
            eventually(&format!("Certificate {name} is Ready"), || async {
                certificates.get(name).await.is_ok_and(|c| ready(&c))
            })
            .await;
        }
        // The ClusterIssuer's own status says its CA was verified.
        let cluster_issuers: Api<ClusterIssuer> = Api::all(client.clone());
        eventually(&format!("ClusterIssuer {issuer_name} is Ready"), || async {
            cluster_issuers
                .get(&issuer_name)
                .await
                .is_ok_and(|i| cluster_issuer_ready(&i))
        })
        .await;
        let issuer = cluster_issuers
            .get(&issuer_name)
            .await
            .expect("reading the ClusterIssuer");
        let condition = issuer
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .expect("a Ready condition");
        assert_eq!(condition.reason.as_deref(), Some("KeyPairVerified"));
        assert_eq!(condition.message.as_deref(), Some("Signing CA verified"));
        assert_eq!(condition.observed_generation, issuer.metadata.generation);
        assert!(condition.last_transition_time.is_some());

        kubectl_get_shows_ready_certificates_readably(&namespace);

        let anchors = X509::parse_pem_bundle(anchor.get("tls.crt").unwrap(), "anchor").unwrap();
        for (name, secret_name) in [
            ("identity-issuer", "identity-issuer"),
            ("shared", "shared-tls"),
        ] {
            let certificate = certificates
                .get(name)
                .await
                .expect("reading the Certificate");
            let written = secrets.get(secret_name).await.expect("reading the Secret");
            let owners = written.owner_references();
            assert!(
                owners.iter().any(|o| o.controller == Some(true)
                    && o.kind == "Certificate"
                    && o.name == name
                    && Some(&o.uid) == certificate.metadata.uid.as_ref()),
                "{secret_name} is owned by {name}: {owners:?}"
            );
            let data = lanyard_rotator::kube::secret_data(&written);
            let chain = X509::parse_pem_bundle(data.get("tls.crt").unwrap(), "tls.crt").unwrap();
            let ca = X509::parse_pem_bundle(data.get("ca.crt").unwrap(), "ca.crt").unwrap();
            assert_eq!(ca[0].der(), anchors[0].der(), "ca.crt is the anchor");
            lanyard_issuer::verify_chain(&chain, &anchors, SystemClock.now()).unwrap_or_else(|e| {
                panic!("{secret_name} tls.crt does not chain to the anchor: {e}")
            });
            assert!(chain[0].is_signed_by(&anchors[0]));
            let status = certificate.status.expect("a status");
            assert_eq!(
                status.not_after,
                Some(chain[0].not_after()),
                "{name} status.notAfter"
            );
            assert_eq!(
                status.not_before,
                Some(chain[0].not_before()),
                "{name} status.notBefore"
            );
        }
        let shared = secrets.get("shared-tls").await.expect("reading shared-tls");
        let shared = lanyard_rotator::kube::secret_data(&shared);
        assert_eq!(
            shared.get("extra"),
            Some(&b"not lanyard's"[..]),
            "a key written by someone else survives"
        );
        assert_eq!(
            Api::<Secret>::namespaced(client.clone(), &namespace)
                .get("shared-tls")
                .await
                .expect("reading shared-tls")
                .type_
                .as_deref(),
            Some("Opaque")
        );

        // Each deletion of the Secret is one re-issue: the revision rises by
        // exactly one and is never written back from a stale copy.
        let revision = |c: &Certificate| c.status.as_ref().and_then(|s| s.revision).unwrap_or(0);
        let highest = std::cell::Cell::new(revision(&certificates.get("shared").await.unwrap()));
        for round in 0..10 {
            secrets
                .delete("shared-tls", &DeleteParams::default())
                .await
                .unwrap_or_else(|e| panic!("round {round}: deleting shared-tls: {e}"));
            let expected = highest.get() + 1;
            eventually(&format!("round {round}: revision {expected}"), || async {
                let now = revision(&certificates.get("shared").await.unwrap());
                let before = highest.get();
                assert!(
                    now >= before,
                    "round {round}: revision fell from {before} to {now}"
                );
                highest.set(before.max(now));
                now == expected && secrets.get_opt("shared-tls").await.unwrap().is_some()
            })
            .await;
            // Settled: no late write from a stale copy takes it back, and
            // no second issue moves it on.
            tokio::time::sleep(Duration::from_millis(700)).await;
            assert_eq!(
                revision(&certificates.get("shared").await.unwrap()),
                expected,
                "round {round}: exactly one re-issue per deletion"
            );
        }

        // The anchor's key is corrupted (a kubernetes.io/tls Secret must
        // keep a tls.key, the API server insists). The ClusterIssuer says so; the
        // Certificates, not due, stay Ready and are not written at all.
        let before: Vec<Certificate> = certificates.list(&Default::default()).await.unwrap().items;
        // Writes `data` into the anchor's Secret and waits until the
        // ClusterIssuer's Ready says `ready`.
        let set_anchor = |data: SecretData, ready: bool| {
            let (secrets, cluster_issuers) = (&secrets, &cluster_issuers);
            let (namespace, issuer_name) = (&namespace, &issuer_name);
            async move {
                secrets
                    .replace(
                        "trust-anchor",
                        &PostParams::default(),
                        &secret(namespace, "trust-anchor", &data, "kubernetes.io/tls"),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("writing the anchor Secret: {e}"));
                eventually(
                    &format!("ClusterIssuer {issuer_name} has Ready={ready}"),
                    || async {
                        cluster_issuers
                            .get(issuer_name)
                            .await
                            .is_ok_and(|i| cluster_issuer_ready(&i) == ready)
                    },
                )
                .await;
            }
        };
        let mut broken = anchor.clone();
        broken.data.insert(
            "tls.key".into(),
            b"-----BEGIN PRIVATE KEY-----\ngarbage\n".to_vec(),
        );
        set_anchor(broken, false).await;
        // The Secret watch has had its chance to wake the Certificates.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let untouched = |when: &'static str| {
            let before = &before;
            let certificates = &certificates;
            async move {
                for old in before {
                    let name = old.name_any();
                    let now = certificates.get(&name).await.unwrap();
                    assert_eq!(
                        now.status, old.status,
                        "{when}: Certificate {name}, not due, keeps its status"
                    );
                }
            }
        };
        untouched("with the anchor broken").await;
        set_anchor(anchor.clone(), true).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        untouched("with the anchor repaired").await;

        // A Secret another object controls (as cert-manager's Certificate
        // does with --enable-certificate-owner-ref) is not taken: the
        // Certificate says who owns it. Once the owner lets go, Lanyard
        // takes the Secret over.
        let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(client.clone(), &namespace);
        let owner = configmaps
            .create(
                &PostParams::default(),
                &k8s_openapi::api::core::v1::ConfigMap {
                    metadata: ObjectMeta {
                        name: Some("previous-owner".into()),
                        ..ObjectMeta::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .expect("creating the owner");
        let mut owned = secret(
            &namespace,
            "migrated-tls",
            // What the previous owner issued: a key pair from another CA.
            &anchor_secret("Previous Owner's CA", now),
            "kubernetes.io/tls",
        );
        owned.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: "previous-owner".into(),
                uid: owner.uid().unwrap(),
                controller: Some(true),
                block_owner_deletion: None,
            },
        ]);
        secrets
            .create(&PostParams::default(), &owned)
            .await
            .expect("creating the owned Secret");
        let mut spec = identity_issuer_spec();
        spec.issuer_ref.name = issuer_name.clone();
        spec.secret_name = "migrated-tls".into();
        certificates
            .create(&PostParams::default(), &Certificate::new("migrated", spec))
            .await
            .expect("creating Certificate migrated");
        let ready_condition = |c: &Certificate| {
            c.status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned())
        };
        eventually("Certificate migrated names the Secret's owner", || async {
            let c = certificates.get("migrated").await.unwrap();
            ready_condition(&c).is_some_and(|r| {
                r.status == "False"
                    && r.reason.as_deref() == Some("SecretOwnerConflict")
                    && r.message.as_deref().is_some_and(|m| {
                        m.contains(&format!(
                            "Secret `{namespace}/migrated-tls` is controlled by v1 ConfigMap `previous-owner`"
                        ))
                    })
            })
        })
        .await;
        secrets
            .patch(
                "migrated-tls",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"ownerReferences": null}})),
            )
            .await
            .expect("removing the previous owner");
        eventually(
            "Certificate migrated is Ready once the Secret is free",
            || async { certificates.get("migrated").await.is_ok_and(|c| ready(&c)) },
        )
        .await;
        let migrated = secrets.get("migrated-tls").await.unwrap();
        assert!(
            migrated
                .owner_references()
                .iter()
                .any(|o| o.controller == Some(true)
                    && o.kind == "Certificate"
                    && o.name == "migrated"),
            "{:?}",
            migrated.owner_references()
        );

        let lease = Api::<Lease>::namespaced(client.clone(), &namespace)
            .get(lanyard_rotator::kube::lease::DEFAULT_LEASE_NAME)
            .await
            .expect("the controller holds a Lease");
        assert_eq!(
            lease.spec.and_then(|s| s.holder_identity).as_deref(),
            Some("live-test")
        );

        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(30), controller)
            .await
            .expect("the controller stops on shutdown")
            .expect("the controller task did not panic")
            .expect("the controller ran without error");
    };
    with_cleanup(body, async {
        if let Err(e) = Api::<ClusterIssuer>::all(client.clone())
            .delete(&issuer_name, &DeleteParams::default())
            .await
        {
            eprintln!("cleanup: deleting ClusterIssuer {issuer_name}: {e}");
        }
        delete_namespace(&client, &namespace).await;
    })
    .await;
}

#[tokio::test]
async fn only_one_replica_holds_the_lease_and_a_regained_lease_starts_a_new_term() {
    let Some(client) =
        live_client("only_one_replica_holds_the_lease_and_a_regained_lease_starts_a_new_term")
            .await
    else {
        return;
    };
    let namespace = unique("lanyard-lease");
    create_namespace(&client, &namespace, Default::default()).await;
    let body = async {
        let a = LeaseLock::new(client.clone(), LeaderElection::new(&namespace, "replica-a"));
        let b = LeaseLock::new(client.clone(), LeaderElection::new(&namespace, "replica-b"));
        let now = SystemClock.now();
        let leases = Api::<Lease>::namespaced(client.clone(), &namespace);
        let acquired_at = || async {
            let lease = leases
                .get(lanyard_rotator::kube::lease::DEFAULT_LEASE_NAME)
                .await
                .unwrap();
            let spec = lease.spec.unwrap();
            (
                spec.holder_identity,
                spec.acquire_time.map(|t| t.0.as_second()),
            )
        };
        assert_eq!(a.try_acquire(now).await.unwrap(), LeaseDecision::Acquire);
        assert!(
            matches!(b.try_acquire(now).await.unwrap(), LeaseDecision::Wait { holder, .. } if holder == "replica-a"),
            "b waits while a holds an unexpired Lease"
        );
        let renewed = now + chrono::TimeDelta::seconds(5);
        assert_eq!(a.try_renew(renewed).await.unwrap(), LeaseDecision::Renew);
        assert_eq!(
            acquired_at().await,
            (Some("replica-a".into()), Some(now.timestamp())),
            "a renewal keeps the acquireTime"
        );
        // a loses the Lease (its renewals failed past the deadline) and
        // takes it again later: a new term, with a new acquireTime.
        let regained = now + chrono::TimeDelta::seconds(30);
        assert_eq!(
            a.try_acquire(regained).await.unwrap(),
            LeaseDecision::Acquire
        );
        assert_eq!(
            acquired_at().await,
            (Some("replica-a".into()), Some(regained.timestamp())),
            "a Lease lost and regained starts a new term"
        );
        // b takes over once a's Lease has expired (b's clock says so).
        let later = regained + chrono::TimeDelta::seconds(16);
        assert_eq!(b.try_acquire(later).await.unwrap(), LeaseDecision::Acquire);
        // A replica releasing a Lease it no longer holds changes nothing.
        a.release().await.unwrap();
        assert!(matches!(
            a.try_acquire(later).await.unwrap(),
            LeaseDecision::Wait { holder, .. } if holder == "replica-b"
        ));
        // b gives it up; a need not wait for it to expire.
        b.release().await.unwrap();
        assert_eq!(a.try_acquire(later).await.unwrap(), LeaseDecision::Acquire);
        let lease = leases
            .get(lanyard_rotator::kube::lease::DEFAULT_LEASE_NAME)
            .await
            .unwrap();
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("replica-a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
    };
    with_cleanup(body, delete_namespace(&client, &namespace)).await;
}

/// `kubectl get certificates` as a user runs it: the columns cert-manager
/// users know, and the end as a timestamp, never `<invalid>` (what kubectl
/// shows for a `date` column in the future). kubectl comes from
/// `$LANYARD_TEST_KUBECTL`, else `PATH`.
fn kubectl_get_shows_ready_certificates_readably(namespace: &str) {
    let kubectl = std::env::var("LANYARD_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let kubeconfig = std::env::var(live::ENV).expect("set for live tests");
    let output = match std::process::Command::new(&kubectl)
        .args([
            "--kubeconfig",
            &kubeconfig,
            "get",
            "certificates.lanyard.dev",
            "-n",
            namespace,
        ])
        .output()
    {
        Ok(output) => output,
        Err(error) => {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: the kubectl check ({kubectl}: {error}); set LANYARD_TEST_KUBECTL"
            );
            return;
        }
    };
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kubectl get: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "SECRET", "NOTAFTER", "AGE"],
        "{table}"
    );
    assert!(!table.contains("<invalid>"), "{table}");
    for line in table.lines().skip(1) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells.get(1), Some(&"True"), "{table}");
        let not_after = cells.get(3).copied().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(not_after).is_ok(),
            "NOTAFTER `{not_after}` is a timestamp:\n{table}"
        );
    }
}
