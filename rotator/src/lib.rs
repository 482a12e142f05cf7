//! Lanyard's certificate controller.
//!
//! The core is pure: [`planner`] decides whether a Certificate needs a new
//! certificate and when, [`reconcile`] turns that decision into a new status
//! and Secret using [`issuing`]. Two shells drive the same core: the local
//! one ([`local`], `lanyard up`) keeps objects and Secrets in a state
//! directory, the Kubernetes one ([`kube`], `lanyard controller`) in an API
//! server. Both find a Certificate's issuer with [`issuer_ref`];
//! [`metrics`] exports what both see.

#![forbid(unsafe_code)]

pub mod anchor;
pub mod issuer_ref;
pub mod issuing;
pub mod kube;
pub mod local;
pub mod metrics;
pub mod planner;
pub mod reconcile;
pub mod secret;
