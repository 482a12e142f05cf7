//! `lanyard-proxy`: the in-pod agent. It makes a P-256 key at start (the
//! key never leaves the process, unless `--agent-only` writes it to a file
//! for an application), gets 24-hour certificates for the pod's identity
//! from the identity service, and keeps them fresh without restarts.
//!
//! The current certificate is published through a
//! [`tokio::sync::watch`] channel: the mTLS proxy's rustls resolver reads
//! it, and in `--agent-only` mode a writer turns each one into files.

#![forbid(unsafe_code)]

pub mod identity;
pub mod metrics;
pub mod proxy;
