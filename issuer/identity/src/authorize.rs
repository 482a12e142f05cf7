//! Whether an authenticated caller may have the identity it asks for: the
//! identity its token proves, in the issuer's identity domain, must be
//! exactly the one in the request. A pure function, so the rule is tested
//! without a server.

use lanyard_crds::identity::{Identity, IdentityDomain};

use crate::service::Authenticated;

/// Why a caller may not have the identity it asked for; answered with
/// `PERMISSION_DENIED`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The token's namespace and service account make no valid identity.
    #[error("{0}")]
    NoIdentity(String),
    /// The token is for another identity than the one requested.
    #[error("the token is for `{proven}`, but the request asks for `{requested}`")]
    OtherIdentity {
        /// The identity the token proves.
        proven: String,
        /// The identity the request names.
        requested: String,
    },
}

/// The identity `who` may be certified as when it asks for `requested`,
/// in `domain`.
pub fn authorize(
    who: &Authenticated,
    requested: &str,
    domain: &IdentityDomain,
) -> Result<Identity, Refusal> {
    let identity = Identity::new(&who.service_account, &who.namespace, domain.clone())
        .map_err(|e| Refusal::NoIdentity(e.to_string()))?;
    if requested != identity.as_str() {
        return Err(Refusal::OtherIdentity {
            proven: identity.to_string(),
            requested: requested.to_string(),
        });
    }
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(namespace: &str, service_account: &str) -> Authenticated {
        Authenticated {
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    #[test]
    fn a_caller_gets_only_the_identity_its_token_proves() {
        let domain = IdentityDomain::linkerd_default();
        let web = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";
        for (case, caller, requested, outcome) in [
            (
                "the identity the token proves is granted",
                who("emojivoto", "web"),
                web,
                Ok(web.to_string()),
            ),
            (
                "another service account's identity is refused",
                who("emojivoto", "emoji"),
                web,
                Err("the token is for `emoji.emojivoto.serviceaccount.identity.linkerd.cluster.local`, but the request asks for `web.emojivoto.serviceaccount.identity.linkerd.cluster.local`".to_string()),
            ),
            (
                "the same service account in another namespace is refused",
                who("default", "web"),
                web,
                Err("the token is for `web.default.serviceaccount.identity.linkerd.cluster.local`, but the request asks for `web.emojivoto.serviceaccount.identity.linkerd.cluster.local`".to_string()),
            ),
            (
                "another identity domain is refused",
                who("emojivoto", "web"),
                "web.emojivoto.serviceaccount.identity.other.example",
                Err("the token is for `web.emojivoto.serviceaccount.identity.linkerd.cluster.local`, but the request asks for `web.emojivoto.serviceaccount.identity.other.example`".to_string()),
            ),
            (
                "names differing only in case are refused",
                who("emojivoto", "web"),
                "WEB.emojivoto.serviceaccount.identity.linkerd.cluster.local",
                Err("the token is for `web.emojivoto.serviceaccount.identity.linkerd.cluster.local`, but the request asks for `WEB.emojivoto.serviceaccount.identity.linkerd.cluster.local`".to_string()),
            ),
        ] {
            let got = authorize(&caller, requested, &domain)
                .map(|i| i.to_string())
                .map_err(|e| e.to_string());
            assert_eq!(got, outcome, "{case}");
        }
    }

    #[test]
    fn a_token_whose_names_make_no_identity_is_refused() {
        let domain = IdentityDomain::linkerd_default();
        for (case, caller) in [
            ("an empty service account", who("emojivoto", "")),
            ("a namespace with a dot", who("emoji.voto", "web")),
        ] {
            assert!(
                matches!(authorize(&caller, "x", &domain), Err(Refusal::NoIdentity(ref m)) if !m.is_empty()),
                "{case}"
            );
        }
    }
}
