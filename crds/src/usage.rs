//! Key usages and private-key algorithms as cert-manager spells them, so a
//! cert-manager `Certificate` applies here with only `apiVersion` changed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One entry of `spec.usages`: cert-manager's `KeyUsage` names, both key
/// usages (`cert sign`) and extended key usages (`server auth`). An unknown
/// name fails to parse, naming the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(schemars::JsonSchema))]
#[non_exhaustive]
pub enum KeyUsage {
    /// `signing`: the same bit as `digital signature`.
    #[serde(rename = "signing")]
    Signing,
    /// `digital signature`
    #[serde(rename = "digital signature")]
    DigitalSignature,
    /// `content commitment` (non-repudiation)
    #[serde(rename = "content commitment")]
    ContentCommitment,
    /// `key encipherment`
    #[serde(rename = "key encipherment")]
    KeyEncipherment,
    /// `key agreement`
    #[serde(rename = "key agreement")]
    KeyAgreement,
    /// `data encipherment`
    #[serde(rename = "data encipherment")]
    DataEncipherment,
    /// `cert sign`
    #[serde(rename = "cert sign")]
    CertSign,
    /// `crl sign`
    #[serde(rename = "crl sign")]
    CrlSign,
    /// `encipher only`
    #[serde(rename = "encipher only")]
    EncipherOnly,
    /// `decipher only`
    #[serde(rename = "decipher only")]
    DecipherOnly,
    /// `any` (anyExtendedKeyUsage)
    #[serde(rename = "any")]
    Any,
    /// `server auth`
    #[serde(rename = "server auth")]
    ServerAuth,
    /// `client auth`
    #[serde(rename = "client auth")]
    ClientAuth,
    /// `code signing`
    #[serde(rename = "code signing")]
    CodeSigning,
    /// `email protection`
    #[serde(rename = "email protection")]
    EmailProtection,
    /// `s/mime`: the same extended usage as `email protection`.
    #[serde(rename = "s/mime")]
    Smime,
    /// `ipsec end system`
    #[serde(rename = "ipsec end system")]
    IpsecEndSystem,
    /// `ipsec tunnel`
    #[serde(rename = "ipsec tunnel")]
    IpsecTunnel,
    /// `ipsec user`
    #[serde(rename = "ipsec user")]
    IpsecUser,
    /// `timestamping`
    #[serde(rename = "timestamping")]
    Timestamping,
    /// `ocsp signing`
    #[serde(rename = "ocsp signing")]
    OcspSigning,
    /// `microsoft sgc`
    #[serde(rename = "microsoft sgc")]
    MicrosoftSgc,
    /// `netscape sgc`
    #[serde(rename = "netscape sgc")]
    NetscapeSgc,
}

impl KeyUsage {
    /// Every usage, in declaration order.
    pub const ALL: [KeyUsage; 23] = [
        KeyUsage::Signing,
        KeyUsage::DigitalSignature,
        KeyUsage::ContentCommitment,
        KeyUsage::KeyEncipherment,
        KeyUsage::KeyAgreement,
        KeyUsage::DataEncipherment,
        KeyUsage::CertSign,
        KeyUsage::CrlSign,
        KeyUsage::EncipherOnly,
        KeyUsage::DecipherOnly,
        KeyUsage::Any,
        KeyUsage::ServerAuth,
        KeyUsage::ClientAuth,
        KeyUsage::CodeSigning,
        KeyUsage::EmailProtection,
        KeyUsage::Smime,
        KeyUsage::IpsecEndSystem,
        KeyUsage::IpsecTunnel,
        KeyUsage::IpsecUser,
        KeyUsage::Timestamping,
        KeyUsage::OcspSigning,
        KeyUsage::MicrosoftSgc,
        KeyUsage::NetscapeSgc,
    ];

    /// The name as written in a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyUsage::Signing => "signing",
            KeyUsage::DigitalSignature => "digital signature",
            KeyUsage::ContentCommitment => "content commitment",
            KeyUsage::KeyEncipherment => "key encipherment",
            KeyUsage::KeyAgreement => "key agreement",
            KeyUsage::DataEncipherment => "data encipherment",
            KeyUsage::CertSign => "cert sign",
            KeyUsage::CrlSign => "crl sign",
            KeyUsage::EncipherOnly => "encipher only",
            KeyUsage::DecipherOnly => "decipher only",
            KeyUsage::Any => "any",
            KeyUsage::ServerAuth => "server auth",
            KeyUsage::ClientAuth => "client auth",
            KeyUsage::CodeSigning => "code signing",
            KeyUsage::EmailProtection => "email protection",
            KeyUsage::Smime => "s/mime",
            KeyUsage::IpsecEndSystem => "ipsec end system",
            KeyUsage::IpsecTunnel => "ipsec tunnel",
            KeyUsage::IpsecUser => "ipsec user",
            KeyUsage::Timestamping => "timestamping",
            KeyUsage::OcspSigning => "ocsp signing",
            KeyUsage::MicrosoftSgc => "microsoft sgc",
            KeyUsage::NetscapeSgc => "netscape sgc",
        }
    }

    /// The usage with aliases folded (`signing` is `digital signature`,
    /// `s/mime` is `email protection`), so two spellings compare equal.
    pub fn canonical(self) -> KeyUsage {
        match self {
            KeyUsage::Signing => KeyUsage::DigitalSignature,
            KeyUsage::Smime => KeyUsage::EmailProtection,
            other => other,
        }
    }

    /// True for the extended key usages (`server auth`, ...), false for
    /// the key usage bits (`cert sign`, ...).
    pub fn is_extended(self) -> bool {
        matches!(
            self.canonical(),
            KeyUsage::Any
                | KeyUsage::ServerAuth
                | KeyUsage::ClientAuth
                | KeyUsage::CodeSigning
                | KeyUsage::EmailProtection
                | KeyUsage::IpsecEndSystem
                | KeyUsage::IpsecTunnel
                | KeyUsage::IpsecUser
                | KeyUsage::Timestamping
                | KeyUsage::OcspSigning
                | KeyUsage::MicrosoftSgc
                | KeyUsage::NetscapeSgc
        )
    }
}

impl fmt::Display for KeyUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `spec.privateKey.algorithm`, spelled as cert-manager spells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(schemars::JsonSchema))]
#[non_exhaustive]
pub enum PrivateKeyAlgorithm {
    /// RSA; `size` 2048 (default), 3072 or 4096.
    #[serde(rename = "RSA")]
    Rsa,
    /// ECDSA; `size` 256 (default) or 384.
    #[default]
    #[serde(rename = "ECDSA")]
    Ecdsa,
    /// Ed25519; `size` is ignored.
    #[serde(rename = "Ed25519")]
    Ed25519,
}

impl fmt::Display for PrivateKeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PrivateKeyAlgorithm::Rsa => "RSA",
            PrivateKeyAlgorithm::Ecdsa => "ECDSA",
            PrivateKeyAlgorithm::Ed25519 => "Ed25519",
        })
    }
}

/// `spec.privateKey.rotationPolicy`: whether a renewal makes a new key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(schemars::JsonSchema))]
#[non_exhaustive]
pub enum RotationPolicy {
    /// A new key at every issuance (cert-manager's default since v1.18).
    #[default]
    Always,
    /// Keep the key in the Secret while it still fits the spec.
    Never,
}
