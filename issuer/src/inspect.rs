//! Human explanations of certificates, in the spirit of `step certificate
//! inspect --short`: the facts a person rotating a mesh's CA asks about.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use x509_parser::extensions::ParsedExtension;

use crate::csr::describe_general_name;
use lanyard_x509::{Certificate, describe_public_key, hex_colon};

/// What `lanyard ca inspect` prints for one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateReport {
    /// Subject, RFC 4514 style.
    pub subject: String,
    /// Issuer name.
    pub issuer: String,
    /// Serial number, hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: DateTime<Utc>,
    /// End of validity.
    pub not_after: DateTime<Utc>,
    /// "valid for another 364d 23h", "expired 2h ago", "not valid for 3h".
    pub time_left: String,
    /// `DNS:…`, `URI:…`, `IP:…` entries.
    pub sans: Vec<String>,
    /// `CA:TRUE, pathlen:0`, or `CA:FALSE`.
    pub basic_constraints: String,
    /// Key usage names.
    pub key_usage: Vec<String>,
    /// Extended key usage names.
    pub extended_key_usage: Vec<String>,
    /// `ECDSA P-256`, `RSA 2048`, `Ed25519`.
    pub public_key: String,
    /// The signature algorithm.
    pub signature_algorithm: String,
    /// SHA-256 of the DER.
    pub sha256_fingerprint: String,
}

/// Explains `cert` as seen at `now`.
pub fn describe(cert: &Certificate, now: DateTime<Utc>) -> CertificateReport {
    let x509 = cert.x509();
    let mut sans = Vec::new();
    let mut key_usage = Vec::new();
    let mut extended_key_usage = Vec::new();
    for ext in x509.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                sans.extend(san.general_names.iter().map(describe_general_name));
            }
            ParsedExtension::KeyUsage(ku) => {
                key_usage = ku.to_string().split(", ").map(str::to_string).collect();
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                let named = [
                    (eku.server_auth, "serverAuth"),
                    (eku.client_auth, "clientAuth"),
                    (eku.code_signing, "codeSigning"),
                    (eku.email_protection, "emailProtection"),
                    (eku.time_stamping, "timeStamping"),
                    (eku.ocsp_signing, "OCSPSigning"),
                    (eku.any, "any"),
                ];
                extended_key_usage.extend(
                    named
                        .iter()
                        .filter(|(on, _)| *on)
                        .map(|(_, n)| n.to_string()),
                );
                extended_key_usage.extend(eku.other.iter().map(|oid| oid.to_id_string()));
            }
            _ => {}
        }
    }
    let basic_constraints = match cert.ca() {
        Some(ca) => match ca.path_len {
            Some(n) => format!("CA:TRUE, pathlen:{n}"),
            None => "CA:TRUE".into(),
        },
        None => "CA:FALSE".into(),
    };
    let signature_algorithm = x509_parser::oid_registry::OidRegistry::default()
        .with_all_crypto()
        .get(&x509.signature_algorithm.algorithm)
        .map(|e| e.sn().to_string())
        .unwrap_or_else(|| x509.signature_algorithm.algorithm.to_id_string());
    CertificateReport {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: hex_colon(x509.raw_serial()),
        not_before: cert.not_before(),
        not_after: cert.not_after(),
        time_left: time_left(cert.not_before(), cert.not_after(), now),
        sans,
        basic_constraints,
        key_usage,
        extended_key_usage,
        public_key: describe_public_key(x509.public_key()),
        signature_algorithm,
        sha256_fingerprint: cert.sha256_fingerprint(),
    }
}

/// "valid for another 29d 3h", "expired 2h 5m ago", "not valid for another 10m".
fn time_left(not_before: DateTime<Utc>, not_after: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if now < not_before {
        format!("not valid for another {}", human(not_before - now))
    } else if now > not_after {
        format!("expired {} ago", human(now - not_after))
    } else {
        format!("valid for another {}", human(not_after - now))
    }
}

/// Rounds a span to its two largest units: `364d 23h`, `2h 5m`, `40s`.
pub(crate) fn human(span: TimeDelta) -> String {
    let secs = span.num_seconds().max(0);
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3_600,
        secs % 3_600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

impl fmt::Display for CertificateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "(none)".to_string()
            } else {
                v.join(", ")
            }
        };
        writeln!(f, "Subject:        {}", self.subject)?;
        writeln!(f, "Issuer:         {}", self.issuer)?;
        writeln!(f, "Serial:         {}", self.serial)?;
        writeln!(
            f,
            "Validity:       {} to {} ({})",
            self.not_before.to_rfc3339(),
            self.not_after.to_rfc3339(),
            self.time_left
        )?;
        writeln!(f, "SANs:           {}", list(&self.sans))?;
        writeln!(f, "Basic:          {}", self.basic_constraints)?;
        writeln!(f, "Key usage:      {}", list(&self.key_usage))?;
        writeln!(f, "Ext. key usage: {}", list(&self.extended_key_usage))?;
        writeln!(f, "Public key:     {}", self.public_key)?;
        writeln!(f, "Signature:      {}", self.signature_algorithm)?;
        write!(f, "SHA-256:        {}", self.sha256_fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_rounded_to_their_two_largest_units() {
        let cases = [
            (
                "a year reads in days and hours",
                TimeDelta::hours(8_759) + TimeDelta::minutes(59),
                "364d 23h",
            ),
            (
                "a few hours read in hours and minutes",
                TimeDelta::minutes(125),
                "2h 5m",
            ),
            (
                "minutes read with seconds",
                TimeDelta::seconds(90),
                "1m 30s",
            ),
            ("seconds read alone", TimeDelta::seconds(40), "40s"),
        ];
        for (name, span, want) in cases {
            assert_eq!(human(span), want, "{name}");
        }
    }
}
