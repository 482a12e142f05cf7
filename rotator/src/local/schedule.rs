//! Which Certificates a pass of the local controller looks at, and in what
//! order, as pure functions of what the pass loaded and what earlier passes
//! recorded.
//!
//! Order: a Certificate whose Secret backs a CA issuer (the identity issuer)
//! is reconciled before the Certificates that issuer signs, deepest chain
//! first, so they are looked at with the fresh CA. Selection: a pass over
//! what is due looks only at Certificates that are new, due, edited, or
//! whose issuer changed.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use lanyard_crds::api::{Certificate, CertificateSpec, IssuerConfig, IssuerKind};

use crate::issuer_ref::{issuer_target, resolve_issuer};

/// An issuer: kind, namespace (empty for a ClusterIssuer) and name.
pub(super) type IssuerKey = (IssuerKind, String, String);

/// A Secret: namespace and name.
pub(super) type SecretKey = (String, String);

/// How many CA levels a chain may have before the order stops following
/// it (a loop of issuers signing each other's CAs ends here too).
const MAX_DEPTH: usize = 8;

/// The CA Secrets the `issuers` sign with, each where it is read from.
pub(super) fn ca_secrets(
    issuers: &BTreeMap<IssuerKey, IssuerConfig>,
    cluster_resource_namespace: &str,
) -> BTreeSet<SecretKey> {
    issuers
        .iter()
        .filter_map(|((kind, namespace, name), config)| {
            let secret = config.ca.as_ref()?.secret_name.clone();
            let target = issuer_target(*kind, namespace, name, cluster_resource_namespace);
            Some((target.secret_namespace, secret))
        })
        .collect()
}

/// A Certificate's own Secret.
fn own_secret(certificate: &Certificate) -> SecretKey {
    (
        certificate.metadata.namespace.clone().unwrap_or_default(),
        certificate.spec.secret_name.clone(),
    )
}

/// The CA Secret the Certificate's issuer signs with, when its issuer is
/// one of `issuers` and a CA issuer.
fn signing_secret(
    certificate: &Certificate,
    issuers: &BTreeMap<IssuerKey, IssuerConfig>,
    cluster_resource_namespace: &str,
) -> Option<SecretKey> {
    let namespace = certificate.metadata.namespace.clone().unwrap_or_default();
    let target = resolve_issuer(
        &namespace,
        &certificate.spec.issuer_ref,
        cluster_resource_namespace,
    )
    .ok()?;
    let ca = issuers.get(&target.key())?.ca.as_ref()?;
    Some((target.secret_namespace, ca.secret_name.clone()))
}

/// How deep a chain of CAs hangs below `certificate`: 0 when its Secret
/// backs no CA issuer, 1 when it does, 2 when a Certificate that CA signs
/// backs a CA issuer too, and so on, up to [`MAX_DEPTH`].
pub(super) fn depth(
    certificate: &Certificate,
    certificates: &[&Certificate],
    issuers: &BTreeMap<IssuerKey, IssuerConfig>,
    ca_secrets: &BTreeSet<SecretKey>,
    cluster_resource_namespace: &str,
) -> usize {
    let mut depth = 0;
    let mut current = own_secret(certificate);
    while ca_secrets.contains(&current) && depth < MAX_DEPTH {
        depth += 1;
        let next = certificates.iter().find(|c| {
            signing_secret(c, issuers, cluster_resource_namespace).as_ref() == Some(&current)
        });
        match next {
            Some(next) => current = own_secret(next),
            None => break,
        }
    }
    depth
}

/// The order of a pass, as indices into `certificates`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Order {
    /// Certificates whose Secrets back a CA issuer, deepest chain first
    /// (then in manifest order): reconciled one at a time, the issuers
    /// reloaded after each rewrite.
    pub(super) chained: Vec<usize>,
    /// The rest, in manifest order: independent of each other.
    pub(super) independent: Vec<usize>,
}

/// Splits `certificates` into those that back a CA, in chain order, and
/// the independent rest.
pub(super) fn chain_order(
    certificates: &[&Certificate],
    issuers: &BTreeMap<IssuerKey, IssuerConfig>,
    ca_secrets: &BTreeSet<SecretKey>,
    cluster_resource_namespace: &str,
) -> Order {
    let mut order: Vec<(usize, usize)> = certificates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let depth = depth(
                c,
                certificates,
                issuers,
                ca_secrets,
                cluster_resource_namespace,
            );
            (usize::MAX - depth, i)
        })
        .collect();
    order.sort();
    let (chained, independent): (Vec<_>, Vec<_>) =
        order.into_iter().partition(|(d, _)| *d != usize::MAX);
    Order {
        chained: chained.into_iter().map(|(_, i)| i).collect(),
        independent: independent.into_iter().map(|(_, i)| i).collect(),
    }
}

/// What earlier passes recorded of a Certificate.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seen<'a> {
    /// The spec it was last reconciled with.
    pub(super) spec: &'a serde_json::Value,
    /// When it is next due: its renewal time or the end of its backoff.
    pub(super) due: DateTime<Utc>,
}

/// Whether a pass over what is due looks at a Certificate with `spec`,
/// signed by `issuer` (`None` when it names none we serve): yes when no
/// pass has seen it, when it is due, when its spec changed, or when its
/// issuer is among the `changed` issuers.
pub(super) fn needs_look(
    spec: &CertificateSpec,
    issuer: Option<&IssuerKey>,
    seen: Option<Seen<'_>>,
    changed: &BTreeSet<IssuerKey>,
    now: DateTime<Utc>,
) -> bool {
    let Some(seen) = seen else {
        return true;
    };
    if seen.due <= now {
        return true;
    }
    issuer.is_some_and(|issuer| changed.contains(issuer))
        || serde_json::to_value(spec).ok().as_ref() != Some(seen.spec)
}

/// The generation of a Certificate whose spec is now `spec`, given the one
/// recorded with the spec last seen: kept while the spec is unchanged, the
/// next after a change, 1 the first time.
pub(super) fn generation(
    recorded: Option<(i64, &serde_json::Value)>,
    spec: &serde_json::Value,
) -> i64 {
    match recorded {
        Some((generation, seen)) if seen == spec => generation,
        Some((generation, _)) => generation + 1,
        None => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_crds::api::CaIssuer;

    const CLUSTER: &str = "lanyard";

    use crate::issuer_ref::certificate_naming as certificate;

    fn ca(secret_name: &str) -> IssuerConfig {
        IssuerConfig {
            ca: Some(CaIssuer {
                secret_name: secret_name.into(),
            }),
            self_signed: None,
        }
    }

    fn self_signed() -> IssuerConfig {
        IssuerConfig {
            ca: None,
            self_signed: Some(Default::default()),
        }
    }

    /// The Linkerd set-up: an anchor ClusterIssuer over
    /// `lanyard/linkerd-trust-anchor`, an Issuer `linkerd/identity` over the
    /// identity issuer's Secret.
    fn linkerd_issuers() -> BTreeMap<IssuerKey, IssuerConfig> {
        BTreeMap::from([
            (
                (IssuerKind::ClusterIssuer, String::new(), "anchor".into()),
                ca("linkerd-trust-anchor"),
            ),
            (
                (IssuerKind::Issuer, "linkerd".into(), "identity".into()),
                ca("identity-issuer-tls"),
            ),
        ])
    }

    #[test]
    fn the_ca_secrets_of_issuers_are_where_each_kind_reads_them() {
        let mut issuers = linkerd_issuers();
        issuers.insert(
            (IssuerKind::Issuer, "web".into(), "self".into()),
            self_signed(),
        );
        let cases = [
            (
                "a ClusterIssuer's CA Secret is in the cluster resource namespace",
                ("lanyard", "linkerd-trust-anchor"),
                true,
            ),
            (
                "an Issuer's CA Secret is in its own namespace",
                ("linkerd", "identity-issuer-tls"),
                true,
            ),
            (
                "a ClusterIssuer's CA Secret is not looked for in other namespaces",
                ("linkerd", "linkerd-trust-anchor"),
                false,
            ),
        ];
        let secrets = ca_secrets(&issuers, CLUSTER);
        for (name, (namespace, secret), expected) in cases {
            assert_eq!(
                secrets.contains(&(namespace.to_string(), secret.to_string())),
                expected,
                "{name}"
            );
        }
        assert_eq!(secrets.len(), 2, "a self-signed issuer has no CA Secret");
    }

    #[test]
    fn certificates_that_back_a_ca_go_first_deepest_chain_first() {
        let identity = certificate(
            "linkerd",
            "identity-issuer",
            "anchor",
            Some("ClusterIssuer"),
        );
        let leaf = certificate("linkerd", "web", "identity", None);
        let other_leaf = certificate("linkerd", "api", "identity", Some("Issuer"));
        let unrelated = certificate("web", "web", "identity", None);
        // A second level: the identity issuer's Secret backs `linkerd/sub`,
        // whose Secret backs `linkerd/sub-ca`.
        let sub = certificate("linkerd", "sub", "identity", None);
        let mut deeper = linkerd_issuers();
        deeper.insert(
            (IssuerKind::Issuer, "linkerd".into(), "sub-ca".into()),
            ca("sub-tls"),
        );
        let signed_by_sub = certificate("linkerd", "deep", "sub-ca", None);
        let mut identity_issuer = identity.clone();
        identity_issuer.spec.secret_name = "identity-issuer-tls".into();

        let cases = [
            (
                "the identity issuer goes before the leaves it signs, whatever the manifest order",
                vec![leaf.clone(), identity_issuer.clone(), other_leaf.clone()],
                linkerd_issuers(),
                Order {
                    chained: vec![1],
                    independent: vec![0, 2],
                },
            ),
            (
                "a leaf in another namespace does not use an Issuer of the same name",
                vec![unrelated.clone(), identity_issuer.clone()],
                linkerd_issuers(),
                Order {
                    chained: vec![1],
                    independent: vec![0],
                },
            ),
            (
                "a deeper chain goes before a shallower one",
                vec![sub.clone(), identity_issuer.clone(), signed_by_sub.clone()],
                deeper,
                Order {
                    chained: vec![1, 0],
                    independent: vec![2],
                },
            ),
            (
                "without CA issuers every Certificate is independent, in manifest order",
                vec![leaf.clone(), identity.clone()],
                BTreeMap::new(),
                Order {
                    chained: vec![],
                    independent: vec![0, 1],
                },
            ),
        ];
        for (name, certificates, issuers, expected) in cases {
            let secrets = ca_secrets(&issuers, CLUSTER);
            assert_eq!(
                chain_order(
                    &certificates.iter().collect::<Vec<_>>(),
                    &issuers,
                    &secrets,
                    CLUSTER
                ),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn a_chain_of_issuers_signing_each_other_stops_at_the_maximum_depth() {
        // `a` is signed by the Issuer over `b`'s Secret and `b` by the one
        // over `a`'s: a loop.
        let a = certificate("ns", "a", "by-b", None);
        let b = certificate("ns", "b", "by-a", None);
        let issuers = BTreeMap::from([
            (
                (IssuerKind::Issuer, "ns".into(), "by-a".into()),
                ca("a-tls"),
            ),
            (
                (IssuerKind::Issuer, "ns".into(), "by-b".into()),
                ca("b-tls"),
            ),
        ]);
        let secrets = ca_secrets(&issuers, CLUSTER);
        let certificates = [&a, &b];
        assert_eq!(
            depth(&a, &certificates, &issuers, &secrets, CLUSTER),
            MAX_DEPTH
        );
    }

    #[test]
    fn a_due_pass_looks_at_what_is_new_due_edited_or_newly_signed() {
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let later = now + chrono::TimeDelta::hours(1);
        let spec = certificate("linkerd", "web", "identity", None).spec;
        let recorded = serde_json::to_value(&spec).unwrap();
        let mut edited = spec.clone();
        edited.dns_names = vec!["web.linkerd.svc".into()];
        let issuer: IssuerKey = (IssuerKind::Issuer, "linkerd".into(), "identity".into());
        let other: IssuerKey = (IssuerKind::ClusterIssuer, String::new(), "anchor".into());
        let seen = |due| {
            Some(Seen {
                spec: &recorded,
                due,
            })
        };
        let none = BTreeSet::new();
        let issuer_changed = BTreeSet::from([issuer.clone()]);
        let other_changed = BTreeSet::from([other.clone()]);
        let cases = [
            (
                "a Certificate no pass has seen is looked at",
                &spec,
                Some(&issuer),
                None,
                &none,
                true,
            ),
            (
                "a Certificate whose time has come is looked at",
                &spec,
                Some(&issuer),
                seen(now),
                &none,
                true,
            ),
            (
                "a Certificate not yet due, unchanged, is left alone",
                &spec,
                Some(&issuer),
                seen(later),
                &none,
                false,
            ),
            (
                "an edited spec is looked at before it is due",
                &edited,
                Some(&issuer),
                seen(later),
                &none,
                true,
            ),
            (
                "a Certificate whose issuer's CA changed is looked at",
                &spec,
                Some(&issuer),
                seen(later),
                &issuer_changed,
                true,
            ),
            (
                "another issuer's change leaves it alone",
                &spec,
                Some(&issuer),
                seen(later),
                &other_changed,
                false,
            ),
            (
                "a Certificate naming no issuer we serve is not looked at for issuer changes",
                &spec,
                None,
                seen(later),
                &issuer_changed,
                false,
            ),
        ];
        for (name, spec, issuer, seen, changed, expected) in cases {
            assert_eq!(
                needs_look(spec, issuer, seen, changed, now),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn the_generation_moves_on_when_the_spec_changes() {
        let spec = serde_json::json!({"secretName": "web-tls"});
        let edited = serde_json::json!({"secretName": "web-tls", "dnsNames": ["web"]});
        let cases = [
            (
                "a Certificate seen for the first time is generation 1",
                None,
                &spec,
                1,
            ),
            (
                "an unchanged spec keeps its generation",
                Some((4, &spec)),
                &spec,
                4,
            ),
            (
                "a changed spec is the next generation",
                Some((4, &spec)),
                &edited,
                5,
            ),
        ];
        for (name, recorded, spec, expected) in cases {
            assert_eq!(generation(recorded, spec), expected, "{name}");
        }
    }
}
