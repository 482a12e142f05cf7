//! Workload identity names, as Linkerd writes them and as SPIFFE reads them.
//!
//! A workload's identity is `<sa>.<ns>.serviceaccount.<identity-domain>`, and
//! the identity domain is `identity.<control-plane-namespace>.<trust-domain>`
//! (`identity.linkerd.cluster.local` with Linkerd's defaults). The same
//! workload is `spiffe://<trust-domain>/ns/<ns>/sa/<sa>` to SPIFFE peers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::quote::quoted;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// No name was given.
    #[error("empty {what}")]
    Empty {
        /// Which name.
        what: &'static str,
    },
    /// The name breaks the DNS rules for its kind.
    #[error("{what} {} is malformed: {reason}", quoted(.name))]
    Malformed {
        /// Which kind of name.
        what: &'static str,
        /// The name.
        name: String,
        /// The broken rule.
        reason: String,
    },
    /// The identity domain does not start with `identity.`.
    #[error(
        "identity domain {} must be `identity.<control-plane-namespace>.<trust-domain>`, e.g. `identity.linkerd.cluster.local`",
        quoted(.name)
    )]
    NotAnIdentityDomain {
        /// The name.
        name: String,
    },
    /// The identity belongs to another identity domain.
    #[error(
        "identity {} is not in the identity domain {}",
        quoted(.identity),
        quoted(.domain)
    )]
    NotInDomain {
        /// The identity.
        identity: String,
        /// The expected domain.
        domain: String,
    },
}

/// The mesh's trust domain, e.g. `cluster.local`: a lowercase DNS name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, IdentityError> {
        check_subdomain("trust domain", s)?;
        Ok(TrustDomain(s.to_string()))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `identity.<control-plane-namespace>.<trust-domain>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdentityDomain {
    control_plane_namespace: String,
    trust_domain: TrustDomain,
    name: String,
}

impl IdentityDomain {
    /// The identity domain of a control plane in `control_plane_namespace`.
    pub fn new(
        control_plane_namespace: &str,
        trust_domain: TrustDomain,
    ) -> Result<Self, IdentityError> {
        check_label("control-plane namespace", control_plane_namespace)?;
        Ok(IdentityDomain {
            name: format!("identity.{control_plane_namespace}.{trust_domain}"),
            control_plane_namespace: control_plane_namespace.to_string(),
            trust_domain,
        })
    }

    /// Linkerd's default: `identity.linkerd.cluster.local`.
    pub fn linkerd_default() -> Self {
        IdentityDomain::new("linkerd", TrustDomain("cluster.local".to_string()))
            .expect("Linkerd's default names are valid")
    }

    /// The trust domain (`cluster.local`).
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The control plane's namespace (`linkerd`).
    pub fn control_plane_namespace(&self) -> &str {
        &self.control_plane_namespace
    }

    /// The trust anchor's common name, `root.<namespace>.<trust-domain>`, as
    /// `step certificate create root.linkerd.cluster.local` names it.
    pub fn anchor_common_name(&self) -> String {
        format!(
            "root.{}.{}",
            self.control_plane_namespace, self.trust_domain
        )
    }

    /// The full name.
    pub fn as_str(&self) -> &str {
        &self.name
    }
}

impl FromStr for IdentityDomain {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, IdentityError> {
        if s.is_empty() {
            return Err(IdentityError::Empty {
                what: "identity domain",
            });
        }
        let rest =
            s.strip_prefix("identity.")
                .ok_or_else(|| IdentityError::NotAnIdentityDomain {
                    name: s.to_string(),
                })?;
        let (namespace, trust_domain) =
            rest.split_once('.')
                .ok_or_else(|| IdentityError::NotAnIdentityDomain {
                    name: s.to_string(),
                })?;
        IdentityDomain::new(namespace, trust_domain.parse()?)
    }
}

impl fmt::Display for IdentityDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A workload identity: `<sa>.<ns>.serviceaccount.<identity-domain>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    service_account: String,
    namespace: String,
    domain: IdentityDomain,
    name: String,
}

impl Identity {
    /// The identity of service account `service_account` in `namespace`.
    pub fn new(
        service_account: &str,
        namespace: &str,
        domain: IdentityDomain,
    ) -> Result<Self, IdentityError> {
        check_subdomain("service account", service_account)?;
        check_label("namespace", namespace)?;
        let name = format!("{service_account}.{namespace}.serviceaccount.{domain}");
        if name.len() > 253 {
            return Err(IdentityError::Malformed {
                what: "identity",
                name,
                reason: "longer than 253 characters".into(),
            });
        }
        Ok(Identity {
            service_account: service_account.to_string(),
            namespace: namespace.to_string(),
            domain,
            name,
        })
    }

    /// Reads `name` as an identity in `domain`.
    pub fn parse(name: &str, domain: &IdentityDomain) -> Result<Self, IdentityError> {
        if name.is_empty() {
            return Err(IdentityError::Empty { what: "identity" });
        }
        let not_in_domain = || IdentityError::NotInDomain {
            identity: name.to_string(),
            domain: domain.to_string(),
        };
        let workload = name
            .strip_suffix(domain.as_str())
            .and_then(|w| w.strip_suffix(".serviceaccount."))
            .ok_or_else(not_in_domain)?;
        // The namespace is one label; the service account may hold dots.
        let (service_account, namespace) = workload
            .rsplit_once('.')
            .ok_or_else(|| not_an_identity(name))?;
        Identity::new(service_account, namespace, domain.clone())
    }

    /// The service account's name.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The identity domain.
    pub fn domain(&self) -> &IdentityDomain {
        &self.domain
    }

    /// The DNS name.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.domain.trust_domain, self.namespace, self.service_account
        )
    }
}

/// The error for a name without the identity's shape.
fn not_an_identity(name: &str) -> IdentityError {
    IdentityError::Malformed {
        what: "identity",
        name: name.to_string(),
        reason: "expected <serviceaccount>.<namespace>.serviceaccount.<identity-domain>".into(),
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    /// Reads a full identity name, its domain included:
    /// `web.emojivoto.serviceaccount.identity.linkerd.cluster.local`.
    fn from_str(name: &str) -> Result<Self, IdentityError> {
        if name.is_empty() {
            return Err(IdentityError::Empty { what: "identity" });
        }
        let (_, domain) = name
            .rsplit_once(".serviceaccount.")
            .ok_or_else(|| not_an_identity(name))?;
        Identity::parse(name, &domain.parse()?)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

macro_rules! string_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

string_serde!(TrustDomain);
string_serde!(IdentityDomain);

/// A DNS-1123 label: `[a-z0-9-]`, 1 to 63 characters, alphanumeric at both ends.
fn check_label(what: &'static str, s: &str) -> Result<(), IdentityError> {
    let malformed = |reason: String| IdentityError::Malformed {
        what,
        name: s.to_string(),
        reason,
    };
    if s.is_empty() {
        return Err(IdentityError::Empty { what });
    }
    if s.len() > 63 {
        return Err(malformed(format!("{} characters; at most 63", s.len())));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(malformed(format!(
            "`{c}` is not allowed; use lowercase letters, digits and `-`"
        )));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(malformed(
            "must start and end with a letter or digit".into(),
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
fn check_subdomain(what: &'static str, s: &str) -> Result<(), IdentityError> {
    if s.is_empty() {
        return Err(IdentityError::Empty { what });
    }
    if s.len() > 253 {
        return Err(IdentityError::Malformed {
            what,
            name: s.to_string(),
            reason: format!("{} characters; at most 253", s.len()),
        });
    }
    for label in s.split('.') {
        check_label(what, label).map_err(|e| match e {
            IdentityError::Empty { .. } => IdentityError::Malformed {
                what,
                name: s.to_string(),
                reason: "has an empty label".into(),
            },
            IdentityError::Malformed { reason, .. } => IdentityError::Malformed {
                what,
                name: s.to_string(),
                reason: format!("label {}: {reason}", quoted(label)),
            },
            other => other,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn linkerd() -> IdentityDomain {
        IdentityDomain::linkerd_default()
    }

    #[test]
    fn names_follow_linkerd() {
        let id = Identity::new("web", "emojivoto", linkerd()).unwrap();
        assert_eq!(
            id.as_str(),
            "web.emojivoto.serviceaccount.identity.linkerd.cluster.local"
        );
        assert_eq!(id.spiffe_id(), "spiffe://cluster.local/ns/emojivoto/sa/web");
        assert_eq!(linkerd().anchor_common_name(), "root.linkerd.cluster.local");
        assert_eq!(linkerd().to_string(), "identity.linkerd.cluster.local");
    }

    #[test]
    fn a_full_name_carries_its_own_domain() {
        let id: Identity = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local"
            .parse()
            .unwrap();
        assert_eq!(id, Identity::new("web", "emojivoto", linkerd()).unwrap());
        let dotted: Identity = "a.b.prod.serviceaccount.identity.mesh.example.org"
            .parse()
            .unwrap();
        assert_eq!(dotted.service_account(), "a.b");
        assert_eq!(dotted.domain().trust_domain().as_str(), "example.org");
        for bad in [
            "",
            "web.emojivoto",
            "web.emojivoto.serviceaccount.cluster.local",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_identities() {
        let cases = [
            (
                "parses a Linkerd guide's identity",
                "web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
                ("web", "emojivoto"),
            ),
            (
                "parses a service account whose name holds dots",
                "api.v2.shop.serviceaccount.identity.linkerd.cluster.local",
                ("api.v2", "shop"),
            ),
            (
                "parses the control plane's own identity",
                "linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local",
                ("linkerd-identity", "linkerd"),
            ),
        ];
        for (name, input, (sa, ns)) in cases {
            let id = Identity::parse(input, &linkerd()).expect(name);
            assert_eq!((id.service_account(), id.namespace()), (sa, ns), "{name}");
            assert_eq!(id.as_str(), input, "{name}");
        }
    }

    #[test]
    fn refuses_malformed_identities() {
        type Check = fn(&IdentityError) -> bool;
        let cases: [(&str, &str, Check); 7] = [
            (
                "refuses an identity from another identity domain",
                "web.emojivoto.serviceaccount.identity.other.example.org",
                |e| matches!(e, IdentityError::NotInDomain { .. }),
            ),
            (
                "refuses an identity without the serviceaccount part",
                "web.emojivoto.identity.linkerd.cluster.local",
                |e| matches!(e, IdentityError::NotInDomain { .. }),
            ),
            (
                "refuses uppercase rather than lowering it",
                "Web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
                |e| matches!(e, IdentityError::Malformed { .. }),
            ),
            (
                "refuses a missing namespace",
                "web.serviceaccount.identity.linkerd.cluster.local",
                |e| matches!(e, IdentityError::Malformed { .. }),
            ),
            (
                "refuses an empty label",
                "web..emojivoto.serviceaccount.identity.linkerd.cluster.local",
                |e| matches!(e, IdentityError::Malformed { .. }),
            ),
            ("refuses an empty identity", "", |e| {
                matches!(e, IdentityError::Empty { .. })
            }),
            (
                "refuses a wildcard, which is policy syntax and not an identity",
                "*.emojivoto.serviceaccount.identity.linkerd.cluster.local",
                |e| matches!(e, IdentityError::Malformed { .. }),
            ),
        ];
        for (name, input, check) in cases {
            let err = Identity::parse(input, &linkerd()).expect_err(name);
            assert!(check(&err), "{name}: {err:?}");
        }
        let long = "a".repeat(64);
        assert!(matches!(
            Identity::new("web", &long, linkerd()),
            Err(IdentityError::Malformed { .. })
        ));
    }

    #[test]
    fn identity_domains_parse_and_refuse() {
        let d: IdentityDomain = "identity.mesh.example.org".parse().unwrap();
        assert_eq!(d.control_plane_namespace(), "mesh");
        assert_eq!(d.trust_domain().as_str(), "example.org");
        for bad in [
            "root.linkerd.cluster.local",
            "identity.linkerd",
            "identity..cluster.local",
            "",
        ] {
            assert!(bad.parse::<IdentityDomain>().is_err(), "{bad}");
        }
        assert!("Cluster.Local".parse::<TrustDomain>().is_err());
        assert!("-bad.local".parse::<TrustDomain>().is_err());
    }

    proptest! {
        #[test]
        fn random_strings_never_panic(s in "\\PC{0,80}") {
            let _ = Identity::parse(&s, &linkerd());
            let _ = s.parse::<IdentityDomain>();
            let _ = s.parse::<TrustDomain>();
        }

        #[test]
        fn every_valid_identity_parses_back(sa in "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z0-9]{1,5})?", ns in "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?") {
            let id = Identity::new(&sa, &ns, linkerd()).unwrap();
            prop_assert_eq!(Identity::parse(id.as_str(), &linkerd()).unwrap(), id);
        }
    }
}
