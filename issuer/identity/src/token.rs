//! Join tokens for the local mode: `lanyard token create` signs a
//! namespace, a service account and an expiry with a key that lives only in
//! the state directory, and the identity service checks them. In a cluster,
//! projected ServiceAccount tokens and a TokenReview take their place.
//!
//! A token reads `lanyard.v1.<namespace>.<service-account>.<expiry>.<mac>`:
//! the names are DNS labels (no dots), the expiry is Unix seconds, and the
//! MAC is HMAC-SHA256 over everything before it, hex-encoded.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use ring::hmac;
use ring::rand::SecureRandom;
use zeroize::Zeroizing;

const PREFIX: &str = "lanyard.v1";
/// Bytes of the HMAC key.
pub const KEY_LEN: usize = 32;
/// The longest a token may live.
pub const MAX_TOKEN_TTL: TimeDelta = TimeDelta::days(366);

/// Why a token was refused. The messages never repeat the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No token was sent.
    #[error("no token was given")]
    Missing,
    /// Not a Lanyard token at all.
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    /// Signed with another key, or altered.
    #[error(
        "the token's signature does not verify (forged, altered, or from another state directory)"
    )]
    Forged,
    /// Past its expiry.
    #[error("the token expired at {0}")]
    Expired(DateTime<Utc>),
    /// A lifetime that is not positive or too long.
    #[error("a token lifetime must be between 1s and 366 days")]
    BadTtl,
    /// A namespace or service account that is not a DNS label.
    #[error("`{0}` is not a valid namespace or service account name")]
    BadName(String),
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's service account.
    pub service_account: String,
    /// When the token stops being accepted.
    pub expires: DateTime<Utc>,
}

/// The key that signs and checks local tokens. `Debug` prints no key bytes.
pub struct TokenKey {
    key: hmac::Key,
    bytes: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

fn is_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl TokenKey {
    /// A new random key.
    pub fn generate() -> Result<Self, lanyard_issuer::Error> {
        let mut bytes = Zeroizing::new(vec![0u8; KEY_LEN]);
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| lanyard_issuer::Error::Random)?;
        Ok(Self::from_bytes(&bytes).expect("a key of the right length"))
    }

    /// A key from its bytes (the key file); `None` unless 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        (bytes.len() == KEY_LEN).then(|| TokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
            bytes: Zeroizing::new(bytes.to_vec()),
        })
    }

    /// The key's bytes, for writing the key file (0600).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The key in `path`, made (random, written atomically with mode 0600)
    /// when the file does not exist yet. A file that is not a key is an
    /// error, never replaced.
    pub fn load_or_create(path: &std::path::Path) -> Result<Self, lanyard_issuer::Error> {
        match std::fs::read(path) {
            Ok(bytes) => Self::from_bytes(&bytes).ok_or_else(|| lanyard_issuer::Error::BadKey {
                what: path.display().to_string(),
                reason: format!(
                    "a token key is {KEY_LEN} bytes, this file has {}",
                    bytes.len()
                ),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| lanyard_issuer::Error::Io {
                        path: dir.to_path_buf(),
                        source,
                    })?;
                }
                lanyard_files::write_atomic(path, key.as_bytes(), lanyard_files::FileMode::Secret)
                    .map_err(|e| lanyard_issuer::Error::Io {
                        path: e.path().to_path_buf(),
                        source: std::io::Error::other(e.reason()),
                    })?;
                Ok(key)
            }
            Err(source) => Err(lanyard_issuer::Error::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// A token for `namespace/service_account` valid from `now` for `ttl`.
    pub fn create(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<String, TokenError> {
        for name in [namespace, service_account] {
            if !is_label(name) {
                return Err(TokenError::BadName(name.to_string()));
            }
        }
        if ttl < TimeDelta::seconds(1) || ttl > MAX_TOKEN_TTL {
            return Err(TokenError::BadTtl);
        }
        let expiry = (now + ttl).timestamp();
        let body = format!("{PREFIX}.{namespace}.{service_account}.{expiry}");
        let mac = hmac::sign(&self.key, body.as_bytes());
        Ok(format!("{body}.{}", hex(mac.as_ref())))
    }

    /// Checks a token's signature and expiry at `now`.
    pub fn verify(&self, token: &[u8], now: DateTime<Utc>) -> Result<TokenClaims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let token = std::str::from_utf8(token)
            .map_err(|_| TokenError::Malformed("not text"))?
            .trim();
        let (body, mac) = token
            .rsplit_once('.')
            .ok_or(TokenError::Malformed("no signature"))?;
        let mac = unhex(mac).ok_or(TokenError::Malformed("the signature is not hex"))?;
        let rest = body
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or(TokenError::Malformed("not a lanyard.v1 token"))?;
        let mut parts = rest.split('.');
        let (Some(namespace), Some(service_account), Some(expiry), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(
                "expected namespace, service account and expiry",
            ));
        };
        // The signature first: nothing unauthenticated is interpreted further.
        hmac::verify(&self.key, body.as_bytes(), &mac).map_err(|_| TokenError::Forged)?;
        let expires = expiry
            .parse::<i64>()
            .ok()
            .and_then(|s| DateTime::from_timestamp(s, 0))
            .ok_or(TokenError::Malformed("the expiry is not a time"))?;
        if now >= expires {
            return Err(TokenError::Expired(expires));
        }
        Ok(TokenClaims {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            expires,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    #[test]
    fn tokens_verify_until_they_expire_and_only_with_their_key() {
        let key = TokenKey::generate().unwrap();
        let other = TokenKey::generate().unwrap();
        let token = key
            .create("ns-a", "sa-a", TimeDelta::hours(1), t0())
            .unwrap();
        let claims = key.verify(token.as_bytes(), t0()).unwrap();
        assert_eq!(
            (claims.namespace.as_str(), claims.service_account.as_str()),
            ("ns-a", "sa-a")
        );
        type Case<'a> = (&'a str, Vec<u8>, DateTime<Utc>, &'a TokenKey, TokenError);
        let cases: Vec<Case> = vec![
            (
                "refuses an empty token",
                vec![],
                t0(),
                &key,
                TokenError::Missing,
            ),
            (
                "refuses a token past its expiry",
                token.clone().into_bytes(),
                t0() + TimeDelta::hours(1),
                &key,
                TokenError::Expired(t0() + TimeDelta::hours(1)),
            ),
            (
                "refuses a token from another key",
                token.clone().into_bytes(),
                t0(),
                &other,
                TokenError::Forged,
            ),
            (
                "refuses a token whose namespace was changed",
                token.replace("ns-a", "ns-b").into_bytes(),
                t0(),
                &key,
                TokenError::Forged,
            ),
            (
                "refuses a token whose expiry was moved",
                token.replace(".1767229200.", ".1967229200.").into_bytes(),
                t0(),
                &key,
                TokenError::Forged,
            ),
            (
                "refuses something else",
                b"eyJhbGciOi.x.y".to_vec(),
                t0(),
                &key,
                TokenError::Malformed("the signature is not hex"),
            ),
        ];
        for (name, token, now, key, expected) in cases {
            assert_eq!(key.verify(&token, now), Err(expected), "{name}");
        }
    }

    #[test]
    fn names_and_lifetimes_are_checked() {
        let key = TokenKey::generate().unwrap();
        assert_eq!(
            key.create("ns.a", "sa", TimeDelta::hours(1), t0()),
            Err(TokenError::BadName("ns.a".into()))
        );
        assert_eq!(
            key.create("ns", "sa", TimeDelta::zero(), t0()),
            Err(TokenError::BadTtl)
        );
        assert_eq!(
            key.create("ns", "sa", TimeDelta::days(400), t0()),
            Err(TokenError::BadTtl)
        );
        assert_eq!(format!("{key:?}"), "TokenKey(..)");
    }
}
