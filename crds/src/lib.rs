//! The shared vocabulary of the Lanyard workspace: Go-style durations as
//! Linkerd and cert-manager users write them, workload identity names, and
//! the injected clock. The Kubernetes API types join it later.

#![forbid(unsafe_code)]

pub mod duration;
pub mod identity;
pub mod time;
