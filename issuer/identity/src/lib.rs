//! Lanyard's identity service: Linkerd's `Certify` API, which trades an
//! agent's CSR and token for a 24-hour workload certificate signed by the
//! identity issuer.
//!
//! - [`service`]: the gRPC handler, with the decisions it makes kept pure
//!   (who a token speaks for, whether that may be the identity asked for,
//!   the per-identity rate limit);
//! - [`serve`]: TLS on a bounded listener, with the service's own serving
//!   certificate renewed from the issuer it serves;
//! - [`reload`]: the issuer swapped in without a restart when its files or
//!   Secret change, or refused while the old one keeps serving;
//! - [`token`]: the join tokens of the local mode;
//! - [`kube`] (feature `kube`): tokens checked with the API server's
//!   TokenReview, and the issuer read from its Secret through a watch;
//! - [`metrics`]: what the service exports.
//!
//! Signing itself is `lanyard-issuer`'s; this crate decides whom to sign for.

#![forbid(unsafe_code)]

#[cfg(feature = "kube")]
pub mod kube;
pub mod metrics;
pub mod reload;
pub mod serve;
pub mod service;
pub mod token;
