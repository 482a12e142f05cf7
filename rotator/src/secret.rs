//! A Secret's contents as both shells see them: the Kubernetes shell maps
//! them to a `v1.Secret`, the local shell to a directory of files.

use std::collections::BTreeMap;
use std::fmt;

pub use lanyard_crds::secret::{CA_CRT, MANAGED_KEYS, TLS_CRT, TLS_KEY};

/// Annotations the controller writes on every Secret it issues into, as
/// cert-manager does under `cert-manager.io/`: they record what the
/// certificate was issued for, so a later spec change is noticed.
pub mod annotations {
    /// The Certificate that owns the Secret.
    pub const CERTIFICATE_NAME: &str = "lanyard.dev/certificate-name";
    /// The issuer's name.
    pub const ISSUER_NAME: &str = "lanyard.dev/issuer-name";
    /// The issuer's kind.
    pub const ISSUER_KIND: &str = "lanyard.dev/issuer-kind";
    /// The issuer's group.
    pub const ISSUER_GROUP: &str = "lanyard.dev/issuer-group";
    /// The requested duration (Go syntax).
    pub const DURATION: &str = "lanyard.dev/duration";
    /// The subject common name.
    pub const COMMON_NAME: &str = "lanyard.dev/common-name";
    /// The revision of the issuance that wrote the Secret: the status's
    /// `revision` once recorded. Written with the Secret, so an issuance
    /// whose status write failed is still recorded (and counted) later.
    pub const REVISION: &str = "lanyard.dev/revision";
    /// On a prepared trust anchor's Secret: the anchor Secret it will
    /// replace when the rotation switches signers.
    pub const PREPARED_ANCHOR_FOR: &str = "lanyard.dev/prepared-anchor-for";
}

/// The contents of a Secret. `Debug` prints key names only, never values,
/// since `tls.key` is among them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData {
    /// Key to bytes.
    pub data: BTreeMap<String, Vec<u8>>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
}

impl SecretData {
    /// The bytes under `key`, if present and not empty.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.data
            .get(key)
            .map(Vec::as_slice)
            .filter(|v| !v.is_empty())
    }

    /// The annotation `key`.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretData")
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("labels", &self.labels)
            .field("annotations", &self.annotations)
            .finish()
    }
}
