//! Which Certificates (and issuers) a change to an Issuer, ClusterIssuer
//! or Secret concerns, from the controller's stores.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use ::kube::ResourceExt;
use ::kube::runtime::reflector::{ObjectRef, Store};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lanyard_crds::api::{
    API_VERSION, Certificate, ClusterIssuer, Issuer, IssuerConfig, IssuerKind,
};

use crate::issuer_ref::{issuer_target, resolve_issuer};

/// Finds the Certificates an Issuer, ClusterIssuer or Secret change
/// concerns, from the controller's stores.
#[derive(Clone)]
pub(super) struct Dependents {
    certificates: Store<Certificate>,
    issuers: Store<Issuer>,
    cluster_issuers: Store<ClusterIssuer>,
    cluster_resource_namespace: String,
    /// Which Certificates name which Secret, kept by the Certificate
    /// watch: a Secret's event finds them without a scan of every
    /// Certificate (a scan per event made a start with N Certificates cost
    /// N² comparisons).
    secret_names: Arc<Mutex<SecretNames>>,
}

/// The Certificates naming each Secret (`namespace/secretName`), and the
/// Secret each Certificate names.
#[derive(Debug, Default)]
pub(super) struct SecretNames {
    by_secret: HashMap<(String, String), BTreeSet<String>>,
    by_certificate: HashMap<(String, String), String>,
}

impl SecretNames {
    /// Records that the Certificate `namespace/name` names the Secret
    /// `secret_name`, or, with `None`, that it is gone.
    pub(super) fn update(&mut self, namespace: &str, name: &str, secret_name: Option<&str>) {
        let key = (namespace.to_string(), name.to_string());
        if let Some(old) = self.by_certificate.remove(&key) {
            let secret = (namespace.to_string(), old);
            if let Some(names) = self.by_secret.get_mut(&secret) {
                names.remove(name);
                if names.is_empty() {
                    self.by_secret.remove(&secret);
                }
            }
        }
        if let Some(secret_name) = secret_name {
            self.by_certificate.insert(key, secret_name.to_string());
            self.by_secret
                .entry((namespace.to_string(), secret_name.to_string()))
                .or_default()
                .insert(name.to_string());
        }
    }

    /// The Certificates naming the Secret `namespace/secret_name`.
    fn naming(&self, namespace: &str, secret_name: &str) -> impl Iterator<Item = &String> {
        self.by_secret
            .get(&(namespace.to_string(), secret_name.to_string()))
            .into_iter()
            .flatten()
    }
}

impl Dependents {
    /// Finds dependents in these stores, with an empty [`SecretNames`]
    /// (the Certificate watch fills it).
    pub(super) fn new(
        certificates: Store<Certificate>,
        issuers: Store<Issuer>,
        cluster_issuers: Store<ClusterIssuer>,
        cluster_resource_namespace: String,
    ) -> Self {
        Dependents {
            certificates,
            issuers,
            cluster_issuers,
            cluster_resource_namespace,
            secret_names: Arc::default(),
        }
    }

    /// Keeps [`SecretNames`] up to date with `certificate`, just changed in
    /// the cache (or deleted from it).
    pub(super) fn certificate_changed(&self, certificate: &Certificate) {
        let namespace = certificate.namespace().unwrap_or_default();
        let name = certificate.name_any();
        let live = self
            .certificates
            .get(&ObjectRef::new(&name).within(&namespace))
            .is_some();
        self.secret_names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .update(
                &namespace,
                &name,
                live.then_some(certificate.spec.secret_name.as_str()),
            );
    }

    pub(super) fn for_issuer(
        &self,
        kind: IssuerKind,
        namespace: Option<&str>,
        name: &str,
    ) -> Vec<ObjectRef<Certificate>> {
        certificates_using_issuer(&self.certificates.state(), kind, namespace, name)
    }

    /// The issuers that sign with `secret`: Issuers in its namespace
    /// naming it, and ClusterIssuers naming it when it is in the cluster
    /// resource namespace.
    pub(super) fn issuers_using_secret(&self, secret: &ObjectMeta) -> SecretUsers {
        let mut users = SecretUsers::default();
        let Some(namespace) = secret.namespace.clone() else {
            return users;
        };
        let name = secret.name.clone().unwrap_or_default();
        let signs_with =
            |kind, issuer_namespace: &str, issuer_name: &str, config: &IssuerConfig| {
                ca_secret_name(config) == Some(name.as_str())
                    && issuer_target(
                        kind,
                        issuer_namespace,
                        issuer_name,
                        &self.cluster_resource_namespace,
                    )
                    .secret_namespace
                        == namespace
            };
        for issuer in self.issuers.state() {
            if let Some(issuer_namespace) = issuer.namespace()
                && signs_with(
                    IssuerKind::Issuer,
                    &issuer_namespace,
                    &issuer.name_any(),
                    &issuer.spec.config,
                )
            {
                users.issuers.push(ObjectRef::from_obj(issuer.as_ref()));
            }
        }
        for issuer in self.cluster_issuers.state() {
            if signs_with(
                IssuerKind::ClusterIssuer,
                "",
                &issuer.name_any(),
                &issuer.spec.config,
            ) {
                users
                    .cluster_issuers
                    .push(ObjectRef::from_obj(issuer.as_ref()));
            }
        }
        users
    }

    /// The Certificates `secret` concerns: the one owning it, those naming
    /// it, and those whose issuer is one of `users` (from
    /// [`Dependents::issuers_using_secret`]).
    pub(super) fn for_secret(
        &self,
        secret: &ObjectMeta,
        users: &SecretUsers,
    ) -> Vec<ObjectRef<Certificate>> {
        let Some(namespace) = secret.namespace.clone() else {
            return Vec::new();
        };
        let name = secret.name.clone().unwrap_or_default();
        let mut found: BTreeSet<(String, String)> = BTreeSet::new();
        // The Certificate that owns it.
        for owner in secret.owner_references.iter().flatten() {
            if owner.controller == Some(true)
                && owner.kind == "Certificate"
                && owner.api_version == API_VERSION
            {
                found.insert((namespace.clone(), owner.name.clone()));
            }
        }
        // Certificates naming it (it may predate them, or have lost its
        // ownerReference).
        for certificate in self
            .secret_names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .naming(&namespace, &name)
        {
            found.insert((namespace.clone(), certificate.clone()));
        }
        // Certificates whose issuer signs with it (a CA Secret: rare, so a
        // scan).
        let certificates = if users.issuers.is_empty() && users.cluster_issuers.is_empty() {
            Vec::new()
        } else {
            self.certificates.state()
        };
        let mut refs = Vec::new();
        for issuer in &users.issuers {
            refs.extend(certificates_using_issuer(
                &certificates,
                IssuerKind::Issuer,
                issuer.namespace.as_deref(),
                &issuer.name,
            ));
        }
        for issuer in &users.cluster_issuers {
            refs.extend(certificates_using_issuer(
                &certificates,
                IssuerKind::ClusterIssuer,
                None,
                &issuer.name,
            ));
        }
        for r in refs {
            found.insert((r.namespace.unwrap_or_default(), r.name));
        }
        found
            .into_iter()
            .map(|(namespace, name)| ObjectRef::new(&name).within(&namespace))
            .collect()
    }
}

/// The issuers that sign with a Secret.
#[derive(Debug, Default)]
pub(super) struct SecretUsers {
    pub(super) issuers: Vec<ObjectRef<Issuer>>,
    pub(super) cluster_issuers: Vec<ObjectRef<ClusterIssuer>>,
}

fn ca_secret_name(config: &IssuerConfig) -> Option<&str> {
    config.ca.as_ref().map(|ca| ca.secret_name.as_str())
}

/// The Certificates that name the issuer `kind`/`name` (an Issuer only
/// from its own `namespace`).
fn certificates_using_issuer(
    certificates: &[Arc<Certificate>],
    kind: IssuerKind,
    namespace: Option<&str>,
    name: &str,
) -> Vec<ObjectRef<Certificate>> {
    certificates
        .iter()
        .filter(|c| {
            // Only the issuer matters here, not where its CA Secret is.
            resolve_issuer(
                c.namespace().as_deref().unwrap_or_default(),
                &c.spec.issuer_ref,
                "",
            )
            .is_ok_and(|target| {
                target.key()
                    == (
                        kind,
                        namespace.unwrap_or_default().to_string(),
                        name.to_string(),
                    )
            })
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::kube::runtime::{reflector, watcher};
    use lanyard_crds::api::{CaIssuer, ClusterIssuerSpec, IssuerSpec};

    fn certificate(
        namespace: &str,
        name: &str,
        issuer: &str,
        kind: Option<&str>,
    ) -> Arc<Certificate> {
        Arc::new(crate::issuer_ref::certificate_naming(
            namespace, name, issuer, kind,
        ))
    }

    fn names(refs: Vec<ObjectRef<Certificate>>) -> Vec<String> {
        let mut names: Vec<String> = refs.into_iter().map(|r| r.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn an_issuer_concerns_certificates_in_its_namespace_and_a_cluster_issuer_all() {
        let certs = [
            certificate("a", "one", "ca", None),
            certificate("a", "two", "ca", Some("ClusterIssuer")),
            certificate("b", "three", "ca", Some("Issuer")),
            certificate("b", "four", "other", Some("ClusterIssuer")),
        ];
        let issuer = names(certificates_using_issuer(
            &certs,
            IssuerKind::Issuer,
            Some("a"),
            "ca",
        ));
        assert_eq!(issuer.len(), 1);
        assert!(issuer[0].contains("one"), "{issuer:?}");
        let cluster = names(certificates_using_issuer(
            &certs,
            IssuerKind::ClusterIssuer,
            None,
            "ca",
        ));
        assert_eq!(cluster.len(), 1);
        assert!(cluster[0].contains("two"), "{cluster:?}");
    }

    fn ca(secret_name: &str) -> IssuerConfig {
        IssuerConfig {
            ca: Some(CaIssuer {
                secret_name: secret_name.into(),
            }),
            self_signed: None,
        }
    }

    fn secret_in(namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_ca_secret_maps_to_the_issuers_that_sign_with_it_and_their_certificates() {
        let (certificates, mut certificate_writer) = reflector::store::<Certificate>();
        let (issuers, mut issuer_writer) = reflector::store::<Issuer>();
        let (cluster_issuers, mut cluster_issuer_writer) = reflector::store::<ClusterIssuer>();
        for cert in [
            certificate("a", "one", "ns-ca", None),
            certificate("b", "two", "ns-ca", None),
            certificate("b", "three", "cluster-ca", Some("ClusterIssuer")),
        ] {
            certificate_writer.apply_watcher_event(&watcher::Event::Apply((*cert).clone()));
        }
        for (namespace, name, secret) in [("a", "ns-ca", "ca"), ("b", "ns-ca", "other")] {
            let mut issuer = Issuer::new(name, IssuerSpec { config: ca(secret) });
            issuer.metadata.namespace = Some(namespace.into());
            issuer_writer.apply_watcher_event(&watcher::Event::Apply(issuer));
        }
        cluster_issuer_writer.apply_watcher_event(&watcher::Event::Apply(ClusterIssuer::new(
            "cluster-ca",
            ClusterIssuerSpec { config: ca("ca") },
        )));
        let dependents = Dependents::new(certificates, issuers, cluster_issuers, "lanyard".into());

        // `a/ca` is the CA of the Issuer `a/ns-ca` only: a ClusterIssuer's
        // CA Secret lives in the cluster resource namespace.
        let secret = secret_in("a", "ca");
        let users = dependents.issuers_using_secret(&secret);
        assert_eq!(
            users.issuers,
            [ObjectRef::new("ns-ca").within("a")],
            "{users:?}"
        );
        assert!(users.cluster_issuers.is_empty(), "{users:?}");
        let certs = names(dependents.for_secret(&secret, &users));
        assert_eq!(certs.len(), 1, "{certs:?}");
        assert!(certs[0].contains("one"), "{certs:?}");

        let secret = secret_in("lanyard", "ca");
        let users = dependents.issuers_using_secret(&secret);
        assert!(users.issuers.is_empty(), "{users:?}");
        assert_eq!(users.cluster_issuers, [ObjectRef::new("cluster-ca")]);
        let certs = names(dependents.for_secret(&secret, &users));
        assert_eq!(certs.len(), 1, "{certs:?}");
        assert!(certs[0].contains("three"), "{certs:?}");

        let secret = secret_in("b", "unrelated");
        let users = dependents.issuers_using_secret(&secret);
        assert!(users.issuers.is_empty() && users.cluster_issuers.is_empty());
    }

    #[test]
    fn a_secret_concerns_the_certificates_naming_it_as_they_are_now() {
        let (certificates, mut writer) = reflector::store::<Certificate>();
        let (issuers, _issuer_writer) = reflector::store::<Issuer>();
        let (cluster_issuers, _cluster_issuer_writer) = reflector::store::<ClusterIssuer>();
        let dependents = Dependents::new(certificates, issuers, cluster_issuers, "lanyard".into());
        let apply = |writer: &mut reflector::store::Writer<Certificate>, cert: Certificate| {
            writer.apply_watcher_event(&watcher::Event::Apply(cert.clone()));
            dependents.certificate_changed(&cert);
        };
        let named = |namespace: &str, secret: &str| {
            names(dependents.for_secret(&secret_in(namespace, secret), &SecretUsers::default()))
        };
        // `certificate_naming` names the Secret `<name>-tls`.
        let mut web = (*certificate("a", "web", "ca", None)).clone();
        apply(&mut writer, web.clone());
        apply(&mut writer, (*certificate("a", "api", "ca", None)).clone());
        apply(&mut writer, (*certificate("b", "web", "ca", None)).clone());
        assert_eq!(named("a", &web.spec.secret_name).len(), 1, "only a/web");
        assert!(named("a", &web.spec.secret_name)[0].contains("web"));
        assert!(
            named("c", &web.spec.secret_name).is_empty(),
            "another namespace"
        );

        // Renamed: the old Secret no longer concerns it, the new one does.
        let old = web.spec.secret_name.clone();
        web.spec.secret_name = "renamed".into();
        apply(&mut writer, web.clone());
        assert!(named("a", &old).is_empty());
        assert_eq!(named("a", "renamed").len(), 1);

        // Deleted: gone from the index with it.
        writer.apply_watcher_event(&watcher::Event::Delete(web.clone()));
        dependents.certificate_changed(&web);
        assert!(named("a", "renamed").is_empty());
    }
}
