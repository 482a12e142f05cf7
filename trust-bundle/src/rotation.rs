//! Trust-anchor rotation with overlap: a state machine whose every step is
//! [`decide`], a pure function of the persisted [`Rotation`], what the
//! shell [`Observed`] and `now`.
//!
//! The phases, with what gates each step:
//!
//! 1. [`Phase::Stable`]: one anchor. A rotation starts when the anchor's
//!    renewal time comes or one is asked for by hand.
//! 2. [`Phase::Prepared`]: a new anchor exists and both anchors are in the
//!    CA's `ca.crt`, so in every bundle target and every `ca.crt` issued
//!    from now on. The issuer still signs with the old chain.
//! 3. [`Phase::Propagated`]: every target was written and read back with
//!    both anchors, and the propagation delay has passed since.
//! 4. [`Phase::IssuerSwitched`]: the CA signs with the new anchor and the
//!    identity issuer was re-issued under it (and, where the shell can
//!    tell, the identity service serves it). New leaves chain to the new
//!    anchor.
//! 5. [`Phase::Drained`]: no live leaf chains only to the old anchor: the
//!    longest leaf lifetime plus skew has passed since the switch, and
//!    every Certificate the controller knows chains to the new anchor. The
//!    old anchor is taken out of the CA's `ca.crt`.
//! 6. [`Phase::Stable`] again once every target was written without the
//!    old anchor.
//!
//! Every action is idempotent and the state is persisted after it, so a
//! crash anywhere resumes where it stopped: a prepared anchor is found
//! again ([`Observed::prepared`]) and adopted, never made twice.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// An anchor, named by the SHA-256 fingerprint of its DER (colon hex).
pub type AnchorId = String;

/// The phase of a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Phase {
    /// One anchor in force; no rotation under way.
    Stable,
    /// A new anchor is trusted beside the old one; the old one signs.
    Prepared,
    /// Both anchors have reached every target.
    Propagated,
    /// The new anchor signs; the identity issuer chains to it.
    IssuerSwitched,
    /// Nothing live chains only to the old anchor; it is being removed.
    Drained,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 5] = [
        Phase::Stable,
        Phase::Prepared,
        Phase::Propagated,
        Phase::IssuerSwitched,
        Phase::Drained,
    ];

    /// The phase's name, as `lanyard anchor status` prints it and the
    /// phase metric labels it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stable => "Stable",
            Phase::Prepared => "Prepared",
            Phase::Propagated => "Propagated",
            Phase::IssuerSwitched => "IssuerSwitched",
            Phase::Drained => "Drained",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a rotation phase"))
    }
}

/// What started a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trigger {
    /// The anchor's renewal time came.
    Schedule,
    /// `lanyard anchor rotate`.
    Manual,
}

/// The persisted state of one anchor's rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    /// The phase.
    pub phase: Phase,
    /// When the phase was entered.
    pub since: DateTime<Utc>,
    /// The anchor in force: the old one while a rotation runs.
    pub current: AnchorId,
    /// The new anchor, from `Prepared` on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<AnchorId>,
    /// What started the rotation under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    /// When every target was first seen holding what this phase needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets_since: Option<DateTime<Utc>>,
    /// When the identity issuer was seen chaining to the new anchor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_at: Option<DateTime<Utc>>,
    /// Rotations completed so far.
    #[serde(default)]
    pub completed: u64,
}

impl Rotation {
    /// A stable state with `current` in force, as of `now`.
    pub fn stable(current: AnchorId, now: DateTime<Utc>) -> Self {
        Rotation {
            phase: Phase::Stable,
            since: now,
            current,
            next: None,
            trigger: None,
            targets_since: None,
            switched_at: None,
            completed: 0,
        }
    }

    fn enter(&self, phase: Phase, now: DateTime<Utc>) -> Rotation {
        Rotation {
            phase,
            since: now,
            targets_since: None,
            ..self.clone()
        }
    }
}

/// Why a rotation cannot be started by hand now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RotateError {
    /// One is under way.
    #[error(
        "a rotation is already under way (phase {phase}, since {}); wait for it to reach Stable",
        since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )]
    InProgress {
        /// Its phase.
        phase: Phase,
        /// Since when.
        since: DateTime<Utc>,
    },
}

/// Whether a rotation may be asked for by hand: only in [`Phase::Stable`].
pub fn may_rotate(state: &Rotation) -> Result<(), RotateError> {
    match state.phase {
        Phase::Stable => Ok(()),
        phase => Err(RotateError::InProgress {
            phase,
            since: state.since,
        }),
    }
}

/// What the shell saw before asking what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The anchor the CA signs with now (its Secret's `tls.crt`).
    pub signer: AnchorId,
    /// The anchors the CA's `ca.crt` holds.
    pub trusted: Vec<AnchorId>,
    /// When the signing anchor is due for rotation (its notAfter less its
    /// renewBefore).
    pub renewal_time: DateTime<Utc>,
    /// A rotation was asked for by hand and not yet started.
    pub requested: bool,
    /// The prepared anchor in storage, if one exists (made by an earlier
    /// step, maybe before a crash).
    pub prepared: Option<AnchorId>,
    /// For each bundle target, the anchors it was read back holding.
    pub targets: Vec<Vec<AnchorId>>,
    /// The anchor the identity issuer chains to (as served, where the
    /// shell can tell), if it is loaded.
    pub issuer_anchor: Option<AnchorId>,
    /// How many Certificates the controller knows still chain only to an
    /// anchor other than the new one.
    pub certificates_on_old: usize,
}

/// The times a rotation waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// After every target holds the new bundle, how long before relying on
    /// workloads having read it.
    pub propagation_delay: TimeDelta,
    /// The longest lifetime of a leaf the identity service issues.
    pub leaf_lifetime: TimeDelta,
    /// Allowance for clock skew and a leaf issued just as the issuer
    /// switched.
    pub skew: TimeDelta,
}

/// What a rotation waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Gate {
    /// The anchor's renewal time (or a rotation asked for by hand).
    AnchorRenewal,
    /// Every bundle target written and read back with the new anchor.
    TargetsHoldNew,
    /// The propagation delay after the targets were written.
    PropagationDelay,
    /// The identity issuer re-issued under the new anchor, and loaded.
    IssuerReissued,
    /// Every Certificate re-issued under the new anchor.
    CertificatesReissued,
    /// Leaves issued under the old anchor have expired.
    LeavesExpired,
    /// Every bundle target written and read back without the old anchor.
    TargetsDropOld,
}

impl Gate {
    /// Whether the gate opens at a time (its `until`), rather than on an
    /// event a shell must look for again.
    pub fn is_timed(self) -> bool {
        matches!(
            self,
            Gate::AnchorRenewal | Gate::PropagationDelay | Gate::LeavesExpired
        )
    }

    /// What the gate waits for, as `lanyard anchor status` prints it.
    pub fn describe(self) -> &'static str {
        match self {
            Gate::AnchorRenewal => "the anchor's renewal time, or `lanyard anchor rotate`",
            Gate::TargetsHoldNew => "every bundle target to hold the new anchor",
            Gate::PropagationDelay => "the propagation delay to pass",
            Gate::IssuerReissued => {
                "the identity issuer to be re-issued under the new anchor and loaded"
            }
            Gate::CertificatesReissued => "every Certificate to be re-issued under the new anchor",
            Gate::LeavesExpired => "leaves issued under the old anchor to expire",
            Gate::TargetsDropOld => "every bundle target to drop the old anchor",
        }
    }
}

/// What the shell must do before persisting [`Decision::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Nothing.
    None,
    /// Make a new anchor and store it as the prepared one.
    GenerateNext,
    /// Make the CA's `ca.crt` hold the current and the new anchor.
    TrustBoth {
        /// The anchor in force.
        current: AnchorId,
        /// The new anchor.
        next: AnchorId,
    },
    /// Make the CA sign with the new anchor (trusting both).
    SwitchSigner {
        /// The new anchor.
        next: AnchorId,
    },
    /// Make the CA's `ca.crt` hold only the new anchor, and discard the
    /// prepared copy.
    DropOld {
        /// The anchor to keep.
        next: AnchorId,
    },
    /// Discard a prepared anchor left from a finished rotation.
    DiscardPrepared,
}

/// The outcome of one [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Do this first.
    pub action: Action,
    /// Then persist this state.
    pub state: Rotation,
    /// When nothing more can be done now: what the rotation waits for,
    /// and when it is due if a time says so (else, on a change).
    pub waiting: Option<(Gate, Option<DateTime<Utc>>)>,
}

impl Decision {
    fn wait(state: &Rotation, gate: Gate, until: Option<DateTime<Utc>>) -> Self {
        Decision {
            action: Action::None,
            state: state.clone(),
            waiting: Some((gate, until)),
        }
    }

    fn act(action: Action, state: Rotation) -> Self {
        Decision {
            action,
            state,
            waiting: None,
        }
    }
}

/// Decides the next step of a rotation. Pure. The shell performs
/// [`Decision::action`], persists [`Decision::state`], observes again and
/// calls this again until it says it is waiting.
pub fn decide(
    state: &Rotation,
    observed: &Observed,
    timing: &Timing,
    now: DateTime<Utc>,
) -> Decision {
    match state.phase {
        Phase::Stable => stable(state, observed, now),
        Phase::Prepared => prepared(state, observed, timing, now),
        Phase::Propagated => propagated(state, observed, now),
        Phase::IssuerSwitched => issuer_switched(state, observed, timing, now),
        Phase::Drained => drained(state, observed, now),
    }
}

fn next_of(state: &Rotation) -> AnchorId {
    state
        .next
        .clone()
        .expect("every phase after Stable records the new anchor")
}

fn stable(state: &Rotation, observed: &Observed, now: DateTime<Utc>) -> Decision {
    // The anchor the CA signs with is the one in force: after a finished
    // rotation, or an anchor replaced by hand.
    if state.current != observed.signer {
        let mut adopted = state.clone();
        adopted.current = observed.signer.clone();
        return Decision::act(Action::None, adopted);
    }
    let due = observed.requested || now >= observed.renewal_time;
    match &observed.prepared {
        // What a finished rotation left behind.
        Some(prepared) if *prepared == state.current => {
            Decision::act(Action::DiscardPrepared, state.clone())
        }
        _ if !due => Decision::wait(state, Gate::AnchorRenewal, Some(observed.renewal_time)),
        None => Decision::act(Action::GenerateNext, state.clone()),
        // A prepared anchor is adopted, whether just made or left by a
        // crash before the state was written: never a second one.
        Some(prepared) => {
            let mut next = state.enter(Phase::Prepared, now);
            next.next = Some(prepared.clone());
            next.trigger = Some(if observed.requested {
                Trigger::Manual
            } else {
                Trigger::Schedule
            });
            next.switched_at = None;
            Decision::act(
                Action::TrustBoth {
                    current: state.current.clone(),
                    next: prepared.clone(),
                },
                next,
            )
        }
    }
}

fn all_targets(observed: &Observed, holds: impl Fn(&[AnchorId]) -> bool) -> bool {
    observed.targets.iter().all(|t| holds(t))
}

fn prepared(
    state: &Rotation,
    observed: &Observed,
    timing: &Timing,
    now: DateTime<Utc>,
) -> Decision {
    let next = next_of(state);
    if !observed.trusted.contains(&state.current) || !observed.trusted.contains(&next) {
        return Decision::act(
            Action::TrustBoth {
                current: state.current.clone(),
                next,
            },
            state.clone(),
        );
    }
    if !all_targets(observed, |t| {
        t.contains(&next) && t.contains(&state.current)
    }) {
        let mut waiting = Decision::wait(state, Gate::TargetsHoldNew, None);
        waiting.state.targets_since = None;
        return waiting;
    }
    let Some(since) = state.targets_since else {
        let mut seen = state.clone();
        seen.targets_since = Some(now);
        return Decision::act(Action::None, seen);
    };
    let due = since + timing.propagation_delay;
    if now < due {
        return Decision::wait(state, Gate::PropagationDelay, Some(due));
    }
    Decision::act(Action::None, state.enter(Phase::Propagated, now))
}

fn propagated(state: &Rotation, observed: &Observed, now: DateTime<Utc>) -> Decision {
    let next = next_of(state);
    if observed.signer != next {
        return Decision::act(Action::SwitchSigner { next }, state.clone());
    }
    if observed.issuer_anchor.as_ref() != Some(&next) {
        return Decision::wait(state, Gate::IssuerReissued, None);
    }
    let mut switched = state.enter(Phase::IssuerSwitched, now);
    switched.switched_at = Some(now);
    Decision::act(Action::None, switched)
}

fn issuer_switched(
    state: &Rotation,
    observed: &Observed,
    timing: &Timing,
    now: DateTime<Utc>,
) -> Decision {
    let next = next_of(state);
    // A signer moved back by hand would strand the new leaves: switch again.
    if observed.signer != next {
        return Decision::act(Action::SwitchSigner { next }, state.clone());
    }
    // An issuer moved back to the old chain would strand nothing yet, but
    // the old anchor must not go while it signs under it.
    if observed.issuer_anchor.as_ref() != Some(&next) {
        return Decision::wait(state, Gate::IssuerReissued, None);
    }
    if observed.certificates_on_old > 0 {
        return Decision::wait(state, Gate::CertificatesReissued, None);
    }
    let switched = state.switched_at.unwrap_or(state.since);
    let drained = switched + timing.leaf_lifetime + timing.skew;
    if now < drained {
        return Decision::wait(state, Gate::LeavesExpired, Some(drained));
    }
    Decision::act(Action::DropOld { next }, state.enter(Phase::Drained, now))
}

fn drained(state: &Rotation, observed: &Observed, now: DateTime<Utc>) -> Decision {
    let next = next_of(state);
    if observed.signer != next {
        return Decision::act(Action::SwitchSigner { next }, state.clone());
    }
    if observed.trusted.contains(&state.current) || observed.prepared.is_some() {
        return Decision::act(Action::DropOld { next }, state.clone());
    }
    if !all_targets(observed, |t| {
        !t.contains(&state.current) && t.contains(&next)
    }) {
        return Decision::wait(state, Gate::TargetsDropOld, None);
    }
    Decision::act(
        Action::None,
        Rotation {
            phase: Phase::Stable,
            since: now,
            current: next,
            next: None,
            trigger: None,
            targets_since: None,
            switched_at: None,
            completed: state.completed + 1,
        },
    )
}
