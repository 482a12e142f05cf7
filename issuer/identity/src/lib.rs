//! Lanyard's identity service: Linkerd's `Certify` API, which trades an
//! agent's CSR and token for a 24-hour workload certificate signed by the
//! identity issuer.
//!
//! - [`service`]: the gRPC handler; the decisions it makes are pure
//!   functions of their own: [`authorize`] (whether the identity a token
//!   proves is the one asked for) and [`rate`] (the per-identity token
//!   bucket);
//! - [`serve`]: TLS on a bounded listener, each answer in one write; [`serving`]: the service's own
//!   certificate, renewed from the issuer it serves;
//! - [`reload`]: the issuer swapped in without a restart when its files or
//!   Secret change, or refused while the old one keeps serving;
//! - [`token`]: the join tokens of the local mode;
//! - [`kube`] (feature `kube`): tokens checked with the API server's
//!   TokenReview, and the issuer read from its Secret through a watch;
//! - [`metrics`]: what the service exports.
//!
//! Signing itself is `lanyard-issuer`'s; this crate decides whom to sign for.

#![forbid(unsafe_code)]

pub mod authorize;
#[cfg(feature = "kube")]
pub mod kube;
pub mod metrics;
mod one_write;
pub mod rate;
pub mod reload;
pub mod serve;
pub mod service;
pub mod serving;
pub mod token;
