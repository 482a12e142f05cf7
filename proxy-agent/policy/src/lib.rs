//! Linkerd's inbound authorization policy, for one job: deciding whether a
//! client may reach a pod's port (and HTTP route). `Server`,
//! `AuthorizationPolicy`, `MeshTLSAuthentication`, `NetworkAuthentication`,
//! `HTTPRoute` and the default policies are compiled from manifests into a
//! [`Policy`] that answers "may this client reach this port (and route)?".
//!
//! The model does not know where the manifests came from (a directory in
//! local mode, the API in a cluster). Every reference is resolved when the
//! policy is built, so a policy that builds has no dangling references;
//! one that does not build names the document and field at fault.
//!
//! Each step is a module; callers use the items re-exported here.
//!
//! - [`manifest`]: the policy kinds as written in YAML (serde types).
//! - `load`: YAML documents into typed objects ([`Manifests::add_yaml`]).
//! - `compile`: references resolved into a [`Policy`] ([`Manifests::build`]).
//! - `eval`: a [`Decision`] for a client on a port or route
//!   ([`Policy::authorize`]), labelled as Linkerd's metrics label it.
//! - `options`: the default policies and [`PolicyOptions`].
//! - `error`: [`PolicyError`], naming the file, document and field.
//! - `dir`: loading and reloading a directory ([`PolicyDir`]).

pub mod manifest;

mod compile;
mod dir;
mod error;
mod eval;
mod load;
mod options;

pub use dir::{PolicyDir, PolicyReload};
pub use error::{PolicyError, PolicyErrors};
pub use eval::{Client, Decision, HttpRequest, Policy, PolicyLabels, PolicyRef, Verdict, Workload};
pub use load::{Manifests, versions_read};
pub use options::{DEFAULT_CLUSTER_NETWORKS, DefaultPolicy, PolicyOptions};
