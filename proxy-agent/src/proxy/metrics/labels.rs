//! The label sets of the proxy's series, each encoded in the order
//! Linkerd's proxy writes its labels.

use std::net::SocketAddr;

use hyper::StatusCode;
use lanyard_policy::PolicyRef;
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};

use super::classify::Class;

/// How the client reached the inbound proxy: Linkerd's `tls` label and
/// its companion (`client_id` or `no_tls_reason`).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum TlsLabel {
    /// A TLS session: `tls="true"`, `client_id` the identity of the
    /// client's certificate, empty when it sent none.
    Established {
        /// The client's identity, if it presented a certificate.
        client_id: Option<String>,
    },
    /// Plaintext: `tls="no_identity",no_tls_reason="no_tls_from_remote"`.
    NoTlsFromRemote,
}

impl EncodeLabelSet for TlsLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        match self {
            TlsLabel::Established { client_id } => {
                ("tls", "true").encode(encoder.encode_label())?;
                ("client_id", client_id.as_deref().unwrap_or("")).encode(encoder.encode_label())
            }
            TlsLabel::NoTlsFromRemote => {
                ("tls", "no_identity").encode(encoder.encode_label())?;
                ("no_tls_reason", "no_tls_from_remote").encode(encoder.encode_label())
            }
        }
    }
}

/// `target_addr`, `target_ip`, `target_port`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct Target(pub(super) SocketAddr);

impl EncodeLabelSet for Target {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("target_addr", self.0.to_string()).encode(encoder.encode_label())?;
        ("target_ip", self.0.ip().to_string()).encode(encoder.encode_label())?;
        ("target_port", self.0.port().to_string()).encode(encoder.encode_label())
    }
}

fn encode_ref(
    encoder: &mut LabelSetEncoder,
    prefix: &str,
    r: &PolicyRef,
) -> Result<(), std::fmt::Error> {
    (format!("{prefix}_group"), &*r.group).encode(encoder.encode_label())?;
    (format!("{prefix}_kind"), &*r.kind).encode(encoder.encode_label())?;
    (format!("{prefix}_name"), &*r.name).encode(encoder.encode_label())
}

/// The labels of one inbound series: where the client was going, how it
/// came, and the policy objects that decided (present or not per metric,
/// as in Linkerd).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct Series {
    pub(super) target: Target,
    pub(super) tls: Option<TlsLabel>,
    pub(super) server: PolicyRef,
    pub(super) route: Option<PolicyRef>,
    pub(super) authz: Option<PolicyRef>,
}

impl Series {
    fn encode_policy(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_ref(encoder, "srv", &self.server)?;
        ("srv_port", self.target.0.port().to_string()).encode(encoder.encode_label())?;
        if let Some(route) = &self.route {
            encode_ref(encoder, "route", route)?;
        }
        if let Some(authz) = &self.authz {
            encode_ref(encoder, "authz", authz)?;
        }
        Ok(())
    }
}

/// The authorization counters' order: target, Server, route, authz, tls.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct AuthzKey(pub(super) Series);

impl EncodeLabelSet for AuthzKey {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.0.target.encode(encoder)?;
        self.0.encode_policy(encoder)?;
        if let Some(tls) = &self.0.tls {
            tls.encode(encoder)?;
        }
        Ok(())
    }
}

/// `request_total`'s order: direction, target, tls, Server, route, authz.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct EndpointKey(pub(super) Series);

impl EncodeLabelSet for EndpointKey {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("direction", "inbound").encode(encoder.encode_label())?;
        self.0.target.encode(encoder)?;
        if let Some(tls) = &self.0.tls {
            tls.encode(encoder)?;
        }
        self.0.encode_policy(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct ResponseKey {
    pub(super) endpoint: EndpointKey,
    pub(super) status: Option<StatusCode>,
    pub(super) class: Class,
}

impl EncodeLabelSet for ResponseKey {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.endpoint.encode(encoder)?;
        if let Some(status) = self.status {
            ("status_code", status.as_u16().to_string()).encode(encoder.encode_label())?;
        }
        let classification = if self.class.is_failure() {
            "failure"
        } else {
            "success"
        };
        ("classification", classification).encode(encoder.encode_label())?;
        let grpc_status = match self.class {
            Class::Grpc { code, .. } => code.to_string(),
            _ => String::new(),
        };
        ("grpc_status", grpc_status).encode(encoder.encode_label())?;
        let error = match self.class {
            Class::Error(error) => error,
            _ => "",
        };
        ("error", error).encode(encoder.encode_label())
    }
}

/// `response_latency_ms`'s labels: the endpoint's and `status_code`, as
/// Linkerd's.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct LatencyKey {
    pub(super) endpoint: EndpointKey,
    pub(super) status: StatusCode,
}

impl EncodeLabelSet for LatencyKey {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.endpoint.encode(encoder)?;
        ("status_code", self.status.as_u16().to_string()).encode(encoder.encode_label())
    }
}

/// `inbound_http_errors_total`'s labels: error, target, Server.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct ErrorKey {
    pub(super) error: &'static str,
    pub(super) series: Series,
}

impl EncodeLabelSet for ErrorKey {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("error", self.error).encode(encoder.encode_label())?;
        self.series.target.encode(encoder)?;
        self.series.encode_policy(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(super) struct ResultLabels {
    pub(super) result: &'static str,
}
