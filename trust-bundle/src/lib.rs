//! Trust bundles and trust-anchor rotation with overlap, as pure functions.
//!
//! - [`bundle`]: which anchors a bundle holds, from its sources' current
//!   contents and the last good contents of each: sorted, deduplicated,
//!   expired anchors dropped with a warning, a broken source keeping its
//!   last good anchors, never empty.
//! - [`rotation`]: the anchor-rotation state machine (`Stable` →
//!   `Prepared` → `Propagated` → `IssuerSwitched` → `Drained` → `Stable`),
//!   one function of the persisted state, what the shell observed and the
//!   time, returning the next action, in the spirit of SPIRE's
//!   `ShouldPrepareNext` / `ShouldActivateNext`.
//!
//! No I/O here: the local shell (`lanyard up`) and the Kubernetes shell
//! read the sources and targets, call these, and write what they return.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod rotation;

pub use bundle::{Anchor, Assembled, BundleError, SourceRead, Warning, assemble};
pub use rotation::{Action, AnchorId, Decision, Gate, Observed, Phase, Rotation, Timing};
