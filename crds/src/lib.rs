//! The shared vocabulary of the Lanyard workspace: the Kubernetes API types
//! (behind the default `api` feature, so the proxy can do without kube),
//! Go-style durations as Linkerd and cert-manager users write them, key
//! usages, workload identity names, the keys of a TLS Secret, the injected
//! clock, and how error messages quote input.

#![forbid(unsafe_code)]

#[cfg(feature = "api")]
pub mod api;
pub mod duration;
pub mod identity;
#[cfg(feature = "api")]
pub mod linkerd;
pub mod quote;
pub mod secret;
pub mod time;
#[cfg(feature = "api")]
pub mod trust_bundle;
pub mod usage;
