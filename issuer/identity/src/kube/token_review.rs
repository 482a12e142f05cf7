//! Who a Kubernetes service account token speaks for, as the API server
//! says: the identity service's [`Authenticator`] in a cluster, as
//! Linkerd's own identity service checks the tokens its proxies send.
//!
//! Each token is sent to the API server in an `authentication.k8s.io/v1`
//! `TokenReview` naming the audience the token must be for
//! ([`DEFAULT_AUDIENCE`], the audience of the tokens Linkerd projects into
//! its proxies). The API server checks the signature, expiry and binding
//! (a token bound to a deleted pod is refused), so the `now` the
//! identity service passes in is not used here. The answer is then judged
//! by [`review_outcome`], a pure function of the review's status.
//!
//! # RBAC
//!
//! The identity service's service account needs `create` on `tokenreviews`
//! in the `authentication.k8s.io` API group. TokenReviews are cluster
//! scoped, so this takes a ClusterRole (the built-in
//! `system:auth-delegator` grants it):
//!
//! ```yaml
//! - apiGroups: ["authentication.k8s.io"]
//!   resources: ["tokenreviews"]
//!   verbs: ["create"]
//! ```

use std::fmt;
use std::time::Duration;

use crate::service::{AuthError, AuthFuture, Authenticated, Authenticator};
use crate::token::TokenError;
use ::kube::Client;
use ::kube::api::{Api, PostParams};
use chrono::{DateTime, Utc};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};

/// The audience Linkerd's projected service account tokens are issued for.
pub const DEFAULT_AUDIENCE: &str = "identity.l5d.io";

/// How long the API server has to answer one review. A `Certify` call
/// waits on it; an API server that does not answer in this time is
/// treated as unavailable, so the agent retries instead of hanging.
pub const DEFAULT_REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// The prefix of a service account's username.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The most of the API server's own words a rejection repeats.
const MAX_REASON_CHARS: usize = 256;

/// Checks tokens with the API server's TokenReview API.
#[derive(Clone)]
pub struct TokenReviewAuthenticator {
    client: Client,
    audience: String,
    timeout: Duration,
}

impl fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReviewAuthenticator")
            .field("audience", &self.audience)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TokenReviewAuthenticator {
    /// Reviews tokens through `client`, for [`DEFAULT_AUDIENCE`].
    pub fn new(client: Client) -> Self {
        TokenReviewAuthenticator {
            client,
            audience: DEFAULT_AUDIENCE.to_string(),
            timeout: DEFAULT_REVIEW_TIMEOUT,
        }
    }

    /// Accepts only tokens issued for `audience`.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self
    }

    /// Gives the API server `timeout` to answer each review.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The audience tokens must be issued for.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Asks the API server who `token` speaks for. An empty or non-UTF-8
    /// token is refused without asking.
    pub async fn review(&self, token: &[u8]) -> Result<Authenticated, AuthError> {
        let token = token_text(token)?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answered =
            match tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &review))
                .await
            {
                Ok(Ok(answered)) => answered,
                Ok(Err(error)) => return Err(api_error(error, token)),
                Err(_) => {
                    return Err(AuthError::Unavailable(format!(
                        "the API server did not answer the TokenReview within {}s",
                        self.timeout.as_secs_f64()
                    )));
                }
            };
        review_outcome(answered.status.as_ref(), &self.audience, token)
    }
}

impl Authenticator for TokenReviewAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a [u8], _now: DateTime<Utc>) -> AuthFuture<'a> {
        Box::pin(self.review(token))
    }
}

/// The token as text, without surrounding whitespace (a token read from a
/// file may end in a newline).
fn token_text(token: &[u8]) -> Result<&str, AuthError> {
    let text = std::str::from_utf8(token)
        .map_err(|_| AuthError::Token(TokenError::Malformed("not text")))?
        .trim();
    if text.is_empty() {
        return Err(AuthError::Token(TokenError::Missing));
    }
    Ok(text)
}

/// Judges a TokenReview's answer: the token speaks for a service account
/// only when the API server authenticated it, for `audience` (when the
/// server reports audiences at all), as
/// `system:serviceaccount:<namespace>:<name>` with both names DNS labels.
/// `token` is only used to keep it out of the reasons given.
pub fn review_outcome(
    status: Option<&TokenReviewStatus>,
    audience: &str,
    token: &str,
) -> Result<Authenticated, AuthError> {
    let rejected = |reason: String| Err(AuthError::Rejected(reason));
    let Some(status) = status else {
        return rejected("the TokenReview came back without a status".into());
    };
    if status.authenticated != Some(true) {
        return rejected(match status.error.as_deref().filter(|e| !e.is_empty()) {
            Some(error) => format!(
                "the API server did not authenticate the token: {}",
                scrub(error, token)
            ),
            None => "the API server did not authenticate the token".into(),
        });
    }
    // An authenticator that knows about audiences answers with those the
    // token was checked against; one that does not leaves the field out.
    if let Some(audiences) = status.audiences.as_ref().filter(|a| !a.is_empty())
        && !audiences.iter().any(|a| a == audience)
    {
        return rejected(format!(
            "the token is for the audiences {audiences:?}, not `{audience}`"
        ));
    }
    let Some(username) = status
        .user
        .as_ref()
        .and_then(|user| user.username.as_deref())
        .filter(|u| !u.is_empty())
    else {
        return rejected("the API server authenticated the token but named no user".into());
    };
    service_account_of(username)
}

/// The namespace and name of a service account's username,
/// `system:serviceaccount:<namespace>:<name>`.
pub fn service_account_of(username: &str) -> Result<Authenticated, AuthError> {
    let Some(rest) = username.strip_prefix(SERVICE_ACCOUNT_PREFIX) else {
        return Err(AuthError::Rejected(format!(
            "the token belongs to the user `{}`, not to a service account",
            shorten(username)
        )));
    };
    let Some((namespace, service_account)) = rest.split_once(':') else {
        return Err(AuthError::Rejected(format!(
            "the username `{}` names no service account",
            shorten(username)
        )));
    };
    for (what, name) in [
        ("namespace", namespace),
        ("service account", service_account),
    ] {
        if !is_dns_label(name) {
            return Err(AuthError::Rejected(format!(
                "the token's {what} `{}` is not a DNS label",
                shorten(name)
            )));
        }
    }
    Ok(Authenticated {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
    })
}

/// A lowercase RFC 1123 label: at most 63 of `a-z0-9-`, alphanumeric at
/// both ends. Namespaces are always labels; a service account name with a
/// dot would make an ambiguous identity, so it is refused too.
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// Maps a failed review request: an API server that cannot answer now (or
/// will not let this service ask) is unavailable, so the agent retries; a
/// request it refuses for its content is a rejection of the token.
fn api_error(error: ::kube::Error, token: &str) -> AuthError {
    let ::kube::Error::Api(status) = error else {
        return AuthError::Unavailable(format!(
            "cannot ask the API server: {}",
            scrub(&error.to_string(), token)
        ));
    };
    let said = scrub(
        &format!("{} {}: {}", status.code, status.reason, status.message),
        token,
    );
    match status.code {
        401 => AuthError::Unavailable(format!(
            "the API server did not accept the identity service's own credentials ({said})"
        )),
        403 => AuthError::Unavailable(format!(
            "the API server forbade the TokenReview; the identity service's service account needs `create` on `tokenreviews.authentication.k8s.io` ({said})"
        )),
        404 => AuthError::Unavailable(format!(
            "the API server does not serve authentication.k8s.io/v1 TokenReviews ({said})"
        )),
        429 | 500..=599 => AuthError::Unavailable(format!("the API server answered {said}")),
        _ => AuthError::Rejected(format!("the API server refused the TokenReview: {said}")),
    }
}

/// `text` with any copy of the token blanked and cut to a readable length.
fn scrub(text: &str, token: &str) -> String {
    shorten(&text.replace(token, "<token>"))
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(MAX_REASON_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.secret-claims.signature";

    fn status(
        authenticated: Option<bool>,
        audiences: Option<&[&str]>,
        username: Option<&str>,
        error: Option<&str>,
    ) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated,
            audiences: audiences.map(|a| a.iter().map(|s| s.to_string()).collect()),
            user: username.map(|u| UserInfo {
                username: Some(u.to_string()),
                ..UserInfo::default()
            }),
            error: error.map(Into::into),
        }
    }

    #[test]
    fn review_outcomes() {
        let sa = "system:serviceaccount:emojivoto:web";
        let accepted = Ok(("emojivoto", "web"));
        type Expected = Result<(&'static str, &'static str), &'static str>;
        let cases: [(&str, Option<TokenReviewStatus>, Expected); 13] = [
            (
                "accepts an authenticated service account for the audience",
                Some(status(
                    Some(true),
                    Some(&[DEFAULT_AUDIENCE]),
                    Some(sa),
                    None,
                )),
                accepted,
            ),
            (
                "accepts an authenticated service account from a server that reports no audiences",
                Some(status(Some(true), None, Some(sa), None)),
                accepted,
            ),
            (
                "accepts when the audience is one of several reported",
                Some(status(
                    Some(true),
                    Some(&["api", DEFAULT_AUDIENCE]),
                    Some(sa),
                    None,
                )),
                accepted,
            ),
            (
                "rejects a review without a status",
                None,
                Err("without a status"),
            ),
            (
                "rejects a token the API server did not authenticate, with its error",
                Some(status(
                    Some(false),
                    None,
                    None,
                    Some("[invalid bearer token, token has expired]"),
                )),
                Err("did not authenticate the token: [invalid bearer token, token has expired]"),
            ),
            (
                "rejects when authenticated is missing",
                Some(status(None, None, Some(sa), None)),
                Err("did not authenticate"),
            ),
            (
                "rejects a token for another audience",
                Some(status(Some(true), Some(&["api"]), Some(sa), None)),
                Err("not `identity.l5d.io`"),
            ),
            (
                "rejects a user that is not a service account",
                Some(status(
                    Some(true),
                    Some(&[DEFAULT_AUDIENCE]),
                    Some("kubernetes-admin"),
                    None,
                )),
                Err("the user `kubernetes-admin`, not to a service account"),
            ),
            (
                "rejects an authenticated token with no user",
                Some(status(Some(true), None, None, None)),
                Err("named no user"),
            ),
            (
                "rejects a service account username without a name",
                Some(status(
                    Some(true),
                    None,
                    Some("system:serviceaccount:emojivoto"),
                    None,
                )),
                Err("names no service account"),
            ),
            (
                "rejects a namespace that is not a DNS label",
                Some(status(
                    Some(true),
                    None,
                    Some("system:serviceaccount:Emoji:web"),
                    None,
                )),
                Err("namespace `Emoji` is not a DNS label"),
            ),
            (
                "rejects a service account name with a dot",
                Some(status(
                    Some(true),
                    None,
                    Some("system:serviceaccount:emojivoto:web.v1"),
                    None,
                )),
                Err("service account `web.v1` is not a DNS label"),
            ),
            (
                "rejects a service account name with a colon",
                Some(status(
                    Some(true),
                    None,
                    Some("system:serviceaccount:emojivoto:web:extra"),
                    None,
                )),
                Err("service account `web:extra` is not a DNS label"),
            ),
        ];
        for (name, status, expected) in cases {
            let got = review_outcome(status.as_ref(), DEFAULT_AUDIENCE, TOKEN);
            match (got, expected) {
                (Ok(who), Ok((namespace, service_account))) => {
                    assert_eq!(
                        (who.namespace.as_str(), who.service_account.as_str()),
                        (namespace, service_account),
                        "{name}"
                    );
                }
                (Err(AuthError::Rejected(reason)), Err(part)) => {
                    assert!(reason.contains(part), "{name}: {reason}");
                }
                (got, expected) => panic!("{name}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn a_rejection_never_repeats_the_token() {
        let echoed = status(
            Some(false),
            None,
            None,
            Some(&format!("token {TOKEN} is not valid")),
        );
        let Err(AuthError::Rejected(reason)) =
            review_outcome(Some(&echoed), DEFAULT_AUDIENCE, TOKEN)
        else {
            panic!("must be rejected");
        };
        assert!(!reason.contains(TOKEN), "{reason}");
        assert!(reason.contains("<token>"), "{reason}");
    }

    #[test]
    fn empty_and_non_text_tokens_are_refused_before_any_request() {
        assert_eq!(token_text(b""), Err(AuthError::Token(TokenError::Missing)));
        assert_eq!(
            token_text(b" \n"),
            Err(AuthError::Token(TokenError::Missing))
        );
        assert_eq!(
            token_text(&[0xff, 0xfe]),
            Err(AuthError::Token(TokenError::Malformed("not text")))
        );
        assert_eq!(token_text(b"abc\n"), Ok("abc"));
    }

    #[test]
    fn long_reasons_are_cut() {
        let long = "x".repeat(1_000);
        let cut = shorten(&long);
        assert_eq!(cut.chars().count(), MAX_REASON_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
