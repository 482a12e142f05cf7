//! The identity service's own certificate, for its own identity
//! (`linkerd-identity.<namespace>.serviceaccount.<identity-domain>`), as
//! Linkerd's identity service serves: signed by the issuer it serves with,
//! renewed when a new issuer is swapped in and at two thirds of its life
//! ([`renewal_time`], the rule every Lanyard certificate follows), and
//! swapped into rustls with no restart.
//!
//! When to renew is a pure function ([`renewal_due`], [`next_renewal`]);
//! [`keep_serving_cert`] is the loop that applies it.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use chrono::{DateTime, TimeDelta, Utc};
use lanyard_crds::identity::Identity;
use lanyard_crds::time::Clock;
use lanyard_issuer::{
    DEFAULT_LEAF_LIFETIME, Error, IdentityIssuer, KeyAlgorithm, SigningKey, Validity,
};
use lanyard_x509::{ClockTime, renewal_time};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::serve::{FIRST_LOAD_INTERVAL, RELOAD_INTERVAL};

/// After a failed renewal, the next attempt waits this long.
pub const RETRY_AFTER: TimeDelta = TimeDelta::seconds(10);

/// The service's own certificate, swapped atomically; handshakes read the
/// current one. Until the first is signed, handshakes wait
/// ([`ServingCert::wait_ready`]) instead of failing.
#[derive(Debug)]
pub struct ServingCert {
    current: ArcSwapOption<CertifiedKey>,
    ready: tokio::sync::watch::Sender<bool>,
}

impl Default for ServingCert {
    fn default() -> Self {
        ServingCert {
            current: ArcSwapOption::empty(),
            ready: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

impl ServingCert {
    /// Signs a new certificate for `identity` with `issuer` (key made here,
    /// never written) and swaps it in. Returns its validity.
    pub fn renew(
        &self,
        issuer: &IdentityIssuer,
        identity: &Identity,
        now: DateTime<Utc>,
    ) -> Result<Validity, Error> {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256)?;
        let csr = key.certificate_signing_request(identity)?;
        let leaf = issuer.issue(&csr, identity, DEFAULT_LEAF_LIFETIME, now)?;
        let chain = std::iter::once(leaf.leaf_der)
            .chain(leaf.chain_der)
            .collect();
        let certified = key.certified_key(chain)?;
        self.current.store(Some(Arc::new(certified)));
        self.ready.send_replace(true);
        Ok(leaf.validity)
    }

    /// Completes once a certificate is in place (at once after the first).
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = ready.wait_for(|ready| *ready).await;
    }
}

/// The TLS configuration of the service: HTTP/2 only, the certificate
/// from `cert`, no client certificates (agents authenticate with tokens),
/// and rustls' time read from `clock`.
pub fn server_config<C: Clock + 'static>(cert: Arc<ServingCert>, clock: C) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder_with_details(
        Arc::new(rustls::crypto::ring::default_provider()),
        Arc::new(ClockTime(clock)),
    )
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_no_client_auth()
    .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// Whether the serving certificate is renewed now: there is none yet, the
/// issuer it was signed by has been replaced, or its renewal time passed.
/// `renew_at` is `None` until one was signed.
pub fn renewal_due(
    signed_by_current_issuer: bool,
    renew_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    !signed_by_current_issuer || renew_at.is_none_or(|at| now >= at)
}

/// When the certificate is looked at again after a renewal attempt at
/// `now`: at its renewal time when one was signed (two thirds of its life,
/// by [`renewal_time`]), else after [`RETRY_AFTER`].
pub fn next_renewal(signed: Option<Validity>, now: DateTime<Utc>) -> DateTime<Utc> {
    match signed {
        Some(validity) => renewal_time(validity.not_before, validity.not_after, None),
        None => now + RETRY_AFTER,
    }
}

/// Keeps the serving certificate current, by [`renewal_due`] and
/// [`next_renewal`]. Runs forever.
pub async fn keep_serving_cert<C: Clock>(
    issuer: Arc<ArcSwapOption<IdentityIssuer>>,
    cert: Arc<ServingCert>,
    identity: Identity,
    clock: C,
) {
    let mut signed_by: Option<Arc<IdentityIssuer>> = None;
    let mut renew_at: Option<DateTime<Utc>> = None;
    loop {
        let now = clock.now();
        if let Some(current) = issuer.load_full() {
            let signed_by_current = signed_by
                .as_ref()
                .is_some_and(|seen| Arc::ptr_eq(seen, &current));
            if renewal_due(signed_by_current, renew_at, now) {
                let signed = match cert.renew(&current, &identity, now) {
                    Ok(validity) => {
                        signed_by = Some(current);
                        Some(validity)
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot renew the identity service's certificate");
                        None
                    }
                };
                renew_at = Some(next_renewal(signed, now));
            }
        }
        let interval = if signed_by.is_some() {
            RELOAD_INTERVAL
        } else {
            FIRST_LOAD_INTERVAL
        };
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn renewal_is_due_for_a_new_issuer_a_first_certificate_or_a_passed_renewal_time() {
        let now = at("2030-01-01T12:00:00Z");
        for (case, signed_by_current, renew_at, due) in [
            ("no certificate was signed yet", false, None, true),
            (
                "the issuer was replaced since the last signing",
                false,
                Some(now + TimeDelta::hours(10)),
                true,
            ),
            (
                "the current issuer's certificate is not due",
                true,
                Some(now + TimeDelta::seconds(1)),
                false,
            ),
            ("its renewal time is now", true, Some(now), true),
            (
                "its renewal time passed",
                true,
                Some(now - TimeDelta::hours(1)),
                true,
            ),
        ] {
            assert_eq!(renewal_due(signed_by_current, renew_at, now), due, "{case}");
        }
    }

    #[test]
    fn the_next_look_follows_the_renewal_rule_or_retries() {
        let now = at("2030-01-01T12:00:00Z");
        let day = Validity {
            not_before: now - TimeDelta::seconds(10),
            not_after: now - TimeDelta::seconds(10) + TimeDelta::hours(24),
            clamped_from: None,
        };
        for (case, signed, expected) in [
            (
                "a 24h certificate is renewed at two thirds of its life",
                Some(day),
                day.not_before + TimeDelta::hours(16),
            ),
            (
                "a failed renewal is retried after ten seconds",
                None,
                now + TimeDelta::seconds(10),
            ),
        ] {
            assert_eq!(next_renewal(signed, now), expected, "{case}");
        }
    }
}
