//! The identity API: Linkerd's `io.linkerd.proxy.identity.Identity`
//! service, whose one call, `Certify`, trades a CSR and a ServiceAccount
//! token for a workload certificate. Written from the published field list,
//! so Linkerd's proxies and Lanyard's agent speak it alike.
//!
//! Only the generated code lives here, as linkerd2-proxy keeps its
//! `proxy-api` apart: the agent links the client, the identity service
//! enables `server` for the server trait. Neither side's logic is here.

#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::all, clippy::pedantic, reason = "generated code")]

tonic::include_proto!("io.linkerd.proxy.identity");
