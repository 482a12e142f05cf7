//! The keys of a `kubernetes.io/tls` Secret as cert-manager writes them,
//! which the controller writes and the identity service reads.

/// The certificate followed by its chain (PEM).
pub const TLS_CRT: &str = "tls.crt";
/// The private key (PKCS#8 PEM).
pub const TLS_KEY: &str = "tls.key";
/// The root the certificate chains to (PEM).
pub const CA_CRT: &str = "ca.crt";
/// The keys the controller writes; other keys in a Secret are left alone.
pub const MANAGED_KEYS: [&str; 3] = [TLS_CRT, TLS_KEY, CA_CRT];
