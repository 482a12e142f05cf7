//! What the proxy's tests share: an identity service over loopback TLS
//! with a Linkerd-shaped CA, and the policy the two-proxy tests use.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use chrono::TimeDelta;
use lanyard_crds::identity::{Identity, IdentityDomain};
use lanyard_crds::time::{Clock, SystemClock};
use lanyard_identity::metrics::IdentityMetrics;
use lanyard_identity::serve::{ServeOptions, serve};
use lanyard_identity::token::TokenKey;
use lanyard_issuer::{IdentityIssuer, KeyAlgorithm, TrustAnchor};

/// An identity service and what it signs with.
pub struct Service {
    /// Where it listens (TLS).
    pub addr: SocketAddr,
    /// The trust anchor, also written to `dir/ca.crt`.
    pub anchor: TrustAnchor,
    /// Signs join tokens the service accepts.
    pub tokens: Arc<TokenKey>,
    /// The issuer slot: empty when started without an issuer.
    pub slot: Arc<ArcSwapOption<IdentityIssuer>>,
    /// An issuer under the anchor, loaded or ready to be.
    pub issuer: Option<IdentityIssuer>,
    /// The anchors file.
    pub ca: PathBuf,
}

impl Service {
    /// Starts the service; with `loaded`, the issuer is in the slot, else
    /// it is kept in `issuer` for the test to load. Without an issuer the
    /// service holds new connections for the handshake timeout, here 1 s,
    /// and then drops them: calls fail quickly until it is loaded.
    pub async fn start(dir: &Path, loaded: bool) -> Service {
        let domain = IdentityDomain::linkerd_default();
        let now = SystemClock.now() - TimeDelta::minutes(1);
        let anchor =
            TrustAnchor::generate(&domain, TimeDelta::hours(100), KeyAlgorithm::EcdsaP256, now)
                .unwrap();
        let (issuer, _) = anchor
            .issue_identity_issuer(&domain, TimeDelta::hours(50), KeyAlgorithm::EcdsaP256, now)
            .unwrap();
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, anchor.certificate().to_pem()).unwrap();
        let tokens = Arc::new(TokenKey::generate().unwrap());
        let (slot, issuer) = if loaded {
            (Arc::new(ArcSwapOption::from(Some(Arc::new(issuer)))), None)
        } else {
            (Arc::new(ArcSwapOption::empty()), Some(issuer))
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(serve(
            ServeOptions {
                addr: "127.0.0.1:0".parse().unwrap(),
                issuer: slot.clone(),
                service_identity: Identity::new("linkerd-identity", "linkerd", domain).unwrap(),
                metrics: IdentityMetrics::new(),
                rate_limit: Default::default(),
                insecure_plaintext: false,
                limits: lanyard_runtime::listen::Limits {
                    handshake_timeout: Duration::from_secs(1),
                    ..Default::default()
                },
                leaf_lifetime: lanyard_issuer::DEFAULT_LEAF_LIFETIME,
            },
            tokens.clone(),
            SystemClock,
            move |addr| {
                let _ = tx.send(addr);
            },
            lanyard_runtime::Shutdown::new(),
        ));
        Service {
            addr: rx.await.unwrap(),
            anchor,
            tokens,
            slot,
            issuer,
            ca,
        }
    }

    /// Writes a token for `namespace/sa` to `path`.
    pub fn token_file(&self, namespace: &str, sa: &str, path: &Path) {
        let token = self
            .tokens
            .create(namespace, sa, TimeDelta::hours(1), SystemClock.now())
            .unwrap();
        std::fs::write(path, token).unwrap();
    }
}

/// A Server for `app=api` in `shop` on `port` (`protocol`), and an
/// AuthorizationPolicy admitting only `allowed`.
pub fn policy_yaml(allowed: &str, port: &str, protocol: &str) -> String {
    format!(
        r#"
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {{name: api-http, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: api}}}}
  port: {port}
  proxyProtocol: {protocol}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {{name: clients, namespace: shop}}
spec:
  identities: ["{allowed}"]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: api-clients, namespace: shop}}
spec:
  targetRef: {{group: policy.linkerd.io, kind: Server, name: api-http}}
  requiredAuthenticationRefs:
    - {{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: clients}}
"#
    )
}

/// Polls `check` every 20 ms until it holds. The minute allowed is only a
/// bound for a test whose event never comes: nothing is timed.
pub async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let polled = tokio::time::timeout(Duration::from_secs(60), async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "timed out waiting for {what}");
}
