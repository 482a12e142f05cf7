//! The anchor-rotation state machine, driven by a simulated shell.
//!
//! [`World`] is what the shell's storage holds (the CA Secret's signer and
//! `ca.crt`, the prepared anchor, the bundle targets, the identity issuer,
//! the Certificates, the persisted [`Rotation`]). The driver does what a
//! shell does: observe, `decide`, perform the action, persist the state,
//! again until told to wait. Crashes are simulated by skipping the
//! persist (or not) and driving again from what was persisted.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use lanyard_trust_bundle::rotation::{
    Action, AnchorId, Gate, Observed, Phase, RotateError, Rotation, Timing, Trigger, decide,
    may_rotate,
};

fn t(s: &str) -> DateTime<Utc> {
    s.parse().expect("an RFC 3339 time")
}

/// When every scenario starts.
fn t0() -> DateTime<Utc> {
    t("2026-06-01T12:00:00Z")
}

fn at(offset: TimeDelta) -> DateTime<Utc> {
    t0() + offset
}

fn minutes(n: i64) -> TimeDelta {
    TimeDelta::minutes(n)
}

fn hours(n: i64) -> TimeDelta {
    TimeDelta::hours(n)
}

fn days(n: i64) -> TimeDelta {
    TimeDelta::days(n)
}

const OLD: &str = "old";
/// The name the first generated anchor gets.
const NEW: &str = "new-1";
/// When the old anchor is due, from [`t0`].
const OLD_RENEWAL_DAYS: i64 = 30;
/// How long a generated anchor lasts before its renewal time.
const NEW_RENEWAL_DAYS: i64 = 365;

fn timing() -> Timing {
    Timing {
        propagation_delay: minutes(10),
        leaf_lifetime: hours(24),
        skew: hours(1),
    }
}

/// One step the shell took: the phase it was in, the action, and the phase
/// it persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Step {
    from: Phase,
    action: &'static str,
    to: Phase,
}

fn kind(action: &Action) -> &'static str {
    match action {
        Action::None => "None",
        Action::GenerateNext => "GenerateNext",
        Action::TrustBoth { .. } => "TrustBoth",
        Action::SwitchSigner { .. } => "SwitchSigner",
        Action::DropOld { .. } => "DropOld",
        Action::DiscardPrepared => "DiscardPrepared",
        other => panic!("an action this shell does not know: {other:?}"),
    }
}

/// Where a simulated crash happens.
#[derive(Debug, Clone, Copy)]
enum When {
    /// At the first step like this one.
    Step(Step),
    /// At the n-th step of the whole run (from 0).
    Nth(usize),
}

/// A crash after performing an action, before or after persisting the
/// state `decide` returned with it.
#[derive(Debug, Clone, Copy)]
struct Crash {
    when: When,
    persisted: bool,
}

#[derive(Debug)]
enum Outcome {
    Waiting(Gate, Option<DateTime<Utc>>),
    Crashed,
}

/// More steps than a whole rotation takes without waiting.
const MAX_STEPS: usize = 16;

/// What storage holds, and the persisted rotation state.
#[derive(Debug, Clone)]
struct World {
    signer: AnchorId,
    trusted: Vec<AnchorId>,
    prepared: Option<AnchorId>,
    targets: Vec<Vec<AnchorId>>,
    issuer_anchor: Option<AnchorId>,
    certificates_on_old: usize,
    requested: bool,
    /// Each anchor's renewal time.
    renewal: BTreeMap<AnchorId, DateTime<Utc>>,
    /// Every anchor generated, in order.
    generated: Vec<AnchorId>,
    persisted: Rotation,
    /// Every step taken that did not wait.
    log: Vec<Step>,
}

fn ids(names: &[&str]) -> Vec<AnchorId> {
    names.iter().map(|n| n.to_string()).collect()
}

impl World {
    /// `old` in force since long ago, due at `t0 + 30d`; two bundle targets
    /// holding it; two Certificates issued under it.
    fn stable() -> World {
        World {
            signer: OLD.into(),
            trusted: ids(&[OLD]),
            prepared: None,
            targets: vec![ids(&[OLD]), ids(&[OLD])],
            issuer_anchor: Some(OLD.into()),
            certificates_on_old: 2,
            requested: false,
            renewal: BTreeMap::from([
                (OLD.to_string(), at(days(OLD_RENEWAL_DAYS))),
                (NEW.to_string(), at(days(NEW_RENEWAL_DAYS))),
            ]),
            generated: vec![],
            persisted: Rotation::stable(OLD.into(), t0() - days(300)),
            log: vec![],
        }
    }

    /// A scheduled rotation from `old` to `new-1` that entered `phase` at
    /// `t0`, with storage as the actions up to that phase left it.
    fn in_phase(phase: Phase) -> World {
        let mut world = World::stable();
        if phase == Phase::Stable {
            return world;
        }
        world.generated = ids(&[NEW]);
        world.prepared = Some(NEW.into());
        world.trusted = ids(&[OLD, NEW]);
        world.persisted = Rotation {
            phase,
            since: t0(),
            current: OLD.into(),
            next: Some(NEW.into()),
            trigger: Some(Trigger::Schedule),
            targets_since: None,
            switched_at: None,
            completed: 0,
        };
        if phase >= Phase::Propagated {
            world.targets = vec![ids(&[OLD, NEW]), ids(&[OLD, NEW])];
        }
        if phase >= Phase::IssuerSwitched {
            world.signer = NEW.into();
            world.issuer_anchor = Some(NEW.into());
            world.certificates_on_old = 0;
            world.persisted.switched_at = Some(t0());
        }
        if phase >= Phase::Drained {
            world.trusted = ids(&[NEW]);
            world.prepared = None;
            world.persisted.switched_at = Some(t0() - hours(25));
        }
        world
    }

    fn observe(&self) -> Observed {
        Observed {
            signer: self.signer.clone(),
            trusted: self.trusted.clone(),
            renewal_time: self.renewal[&self.signer],
            requested: self.requested,
            prepared: self.prepared.clone(),
            targets: self.targets.clone(),
            issuer_anchor: self.issuer_anchor.clone(),
            certificates_on_old: self.certificates_on_old,
        }
    }

    /// What the shell does for each action.
    fn apply(&mut self, action: &Action, now: DateTime<Utc>) {
        match action {
            Action::None => {}
            Action::GenerateNext => {
                let id = format!("new-{}", self.generated.len() + 1);
                self.generated.push(id.clone());
                self.renewal
                    .insert(id.clone(), now + days(NEW_RENEWAL_DAYS));
                self.prepared = Some(id);
            }
            Action::TrustBoth { current, next } => {
                assert_eq!(
                    self.prepared.as_ref(),
                    Some(next),
                    "TrustBoth names the prepared anchor"
                );
                self.trusted = vec![current.clone(), next.clone()];
            }
            Action::SwitchSigner { next } => {
                assert!(
                    self.trusted.contains(next),
                    "the CA switches to an anchor its ca.crt already trusts"
                );
                self.signer = next.clone();
            }
            Action::DropOld { next } => {
                assert_eq!(
                    &self.signer, next,
                    "the old anchor is dropped after the switch"
                );
                self.trusted = vec![next.clone()];
                self.prepared = None;
            }
            Action::DiscardPrepared => self.prepared = None,
            other => panic!("an action this shell does not know: {other:?}"),
        }
    }

    /// The shell takes a manual request once a rotation has been persisted.
    fn persist(&mut self, state: Rotation) {
        if state.phase != Phase::Stable {
            self.requested = false;
        }
        self.persisted = state;
    }

    /// The bundle controller's pass: every target written with the CA's
    /// `ca.crt`.
    fn bundle_pass(&mut self) {
        for target in &mut self.targets {
            *target = self.trusted.clone();
        }
    }

    /// Observe, decide, act, persist, until told to wait, or until `crash`.
    fn run(&mut self, now: DateTime<Utc>, crash: &mut Option<Crash>) -> Outcome {
        for _ in 0..MAX_STEPS {
            let from = self.persisted.phase;
            let decision = decide(&self.persisted, &self.observe(), &timing(), now);
            if let Some((gate, until)) = decision.waiting {
                assert_eq!(
                    decision.action,
                    Action::None,
                    "a decision that waits asks for nothing: {decision:?}"
                );
                self.persist(decision.state);
                return Outcome::Waiting(gate, until);
            }
            assert!(
                decision.action != Action::None || decision.state != self.persisted,
                "decide neither acted, changed the state nor waited: {decision:?}, after {:?}",
                self.log
            );
            let step = Step {
                from,
                action: kind(&decision.action),
                to: decision.state.phase,
            };
            let n = self.log.len();
            self.log.push(step);
            self.apply(&decision.action, now);
            let crashes = crash.is_some_and(|c| match c.when {
                When::Step(s) => s == step,
                When::Nth(k) => k == n,
            });
            if crashes {
                let c = crash.take().expect("checked");
                if c.persisted {
                    self.persist(decision.state);
                }
                return Outcome::Crashed;
            }
            self.persist(decision.state);
        }
        panic!(
            "decide did not wait after {MAX_STEPS} steps: {:?}",
            self.log
        );
    }

    fn run_until_waiting(&mut self, now: DateTime<Utc>) -> (Gate, Option<DateTime<Utc>>) {
        match self.run(now, &mut None) {
            Outcome::Waiting(gate, until) => (gate, until),
            Outcome::Crashed => unreachable!("no crash was asked for"),
        }
    }

    /// Drives a rotation to its end from `now`, resolving each gate as the
    /// rest of the system would (the bundle pass, the issuer re-issue, the
    /// Certificates re-issued, time passing), restarting after a crash.
    /// Returns whether the crash happened.
    fn rotate_to_the_end(
        &mut self,
        mut now: DateTime<Utc>,
        mut crash: Option<Crash>,
        manual: bool,
    ) -> bool {
        let mut crashed = false;
        for _ in 0..64 {
            match self.run(now, &mut crash) {
                // The restart: the same world, driven again from what was
                // persisted.
                Outcome::Crashed => crashed = true,
                Outcome::Waiting(gate, until) => match gate {
                    Gate::AnchorRenewal if self.persisted.completed >= 1 => return crashed,
                    Gate::AnchorRenewal => {
                        assert!(
                            !manual,
                            "a rotation asked for by hand waits for no renewal time: {:?}",
                            self.log
                        );
                        now = until.expect("a renewal time");
                    }
                    Gate::TargetsHoldNew | Gate::TargetsDropOld => self.bundle_pass(),
                    Gate::PropagationDelay | Gate::LeavesExpired => {
                        now = until.expect("a time to wait for");
                    }
                    Gate::IssuerReissued => self.issuer_anchor = Some(self.signer.clone()),
                    Gate::CertificatesReissued => self.certificates_on_old = 0,
                    other => panic!("a gate this shell does not know: {other:?}"),
                },
            }
        }
        panic!("the rotation did not end: {:?}", self.log);
    }

    fn assert_rotated_once(&self, case: &str) {
        assert_eq!(self.generated, ids(&[NEW]), "{case}: anchors generated");
        let state = &self.persisted;
        assert_eq!(state.phase, Phase::Stable, "{case}: {state:?}");
        assert_eq!(state.current, NEW, "{case}: {state:?}");
        assert_eq!(state.next, None, "{case}: {state:?}");
        assert_eq!(state.trigger, None, "{case}: {state:?}");
        assert_eq!(state.targets_since, None, "{case}: {state:?}");
        assert_eq!(state.switched_at, None, "{case}: {state:?}");
        assert_eq!(state.completed, 1, "{case}: {state:?}");
        assert_eq!(self.signer, NEW, "{case}: signer");
        assert_eq!(self.trusted, ids(&[NEW]), "{case}: trusted");
        assert_eq!(self.prepared, None, "{case}: prepared");
        assert_eq!(self.issuer_anchor.as_deref(), Some(NEW), "{case}: issuer");
        for target in &self.targets {
            assert_eq!(target, &ids(&[NEW]), "{case}: targets");
        }
        assert!(!self.requested, "{case}: a request left pending");
    }
}

/// One row: a world, the time the shell wakes, and what it must do.
struct Case {
    name: &'static str,
    given: fn() -> World,
    now: DateTime<Utc>,
    /// The actions taken before waiting, in order.
    actions: &'static [&'static str],
    /// The gate waited on and until when.
    waiting: (Gate, Option<DateTime<Utc>>),
    /// The phase persisted.
    phase: Phase,
    /// More checks, and further steps of the same story.
    then: fn(&mut World),
}

fn actions(world: &World, since: usize) -> Vec<&'static str> {
    world.log[since..].iter().map(|s| s.action).collect()
}

fn nothing_more(_: &mut World) {}

#[test]
fn the_rotation_state_machine() {
    let cases = [
        Case {
            name: "a stable anchor before its renewal time waits for it",
            given: World::stable,
            now: t0(),
            actions: &[],
            waiting: (Gate::AnchorRenewal, Some(at(days(OLD_RENEWAL_DAYS)))),
            phase: Phase::Stable,
            then: |w| {
                assert!(w.generated.is_empty());
                assert_eq!(w.persisted, World::stable().persisted);
            },
        },
        Case {
            name: "the renewal time starts a rotation: a new anchor is made and trusted beside the old",
            given: World::stable,
            now: at(days(OLD_RENEWAL_DAYS)),
            actions: &["GenerateNext", "TrustBoth"],
            waiting: (Gate::TargetsHoldNew, None),
            phase: Phase::Prepared,
            then: |w| {
                assert_eq!(w.generated, ids(&[NEW]));
                assert_eq!(w.trusted, ids(&[OLD, NEW]));
                assert_eq!(w.signer, OLD, "the old anchor still signs");
                let state = &w.persisted;
                assert_eq!(state.current, OLD);
                assert_eq!(state.next.as_deref(), Some(NEW));
                assert_eq!(state.trigger, Some(Trigger::Schedule));
                assert_eq!(state.since, at(days(OLD_RENEWAL_DAYS)));
                assert_eq!(state.completed, 0);
            },
        },
        Case {
            name: "a manual request starts a rotation before the renewal time",
            given: || World {
                requested: true,
                ..World::stable()
            },
            now: t0(),
            actions: &["GenerateNext", "TrustBoth"],
            waiting: (Gate::TargetsHoldNew, None),
            phase: Phase::Prepared,
            then: |w| {
                assert_eq!(w.persisted.trigger, Some(Trigger::Manual));
                assert_eq!(w.persisted.next.as_deref(), Some(NEW));
                assert_eq!(w.generated, ids(&[NEW]));
            },
        },
        Case {
            name: "a prepared anchor left by a crash is adopted at the renewal time, not made again",
            given: || World {
                prepared: Some(NEW.into()),
                generated: ids(&[NEW]),
                ..World::stable()
            },
            now: at(days(OLD_RENEWAL_DAYS)),
            actions: &["TrustBoth"],
            waiting: (Gate::TargetsHoldNew, None),
            phase: Phase::Prepared,
            then: |w| {
                assert_eq!(w.generated, ids(&[NEW]));
                assert_eq!(w.persisted.next.as_deref(), Some(NEW));
            },
        },
        Case {
            name: "a prepared anchor waits for the renewal time like any other",
            given: || World {
                prepared: Some(NEW.into()),
                generated: ids(&[NEW]),
                ..World::stable()
            },
            now: t0(),
            actions: &[],
            waiting: (Gate::AnchorRenewal, Some(at(days(OLD_RENEWAL_DAYS)))),
            phase: Phase::Stable,
            then: |w| assert_eq!(w.prepared.as_deref(), Some(NEW)),
        },
        Case {
            name: "Prepared waits for every target to hold both anchors",
            given: || World {
                targets: vec![ids(&[OLD, NEW]), ids(&[OLD])],
                ..World::in_phase(Phase::Prepared)
            },
            now: at(hours(1)),
            actions: &[],
            waiting: (Gate::TargetsHoldNew, None),
            phase: Phase::Prepared,
            then: |w| assert_eq!(w.persisted.targets_since, None),
        },
        Case {
            name: "a target holding only the new anchor does not count as holding both",
            given: || World {
                targets: vec![ids(&[OLD, NEW]), ids(&[NEW])],
                ..World::in_phase(Phase::Prepared)
            },
            now: at(hours(1)),
            actions: &[],
            waiting: (Gate::TargetsHoldNew, None),
            phase: Phase::Prepared,
            then: nothing_more,
        },
        Case {
            name: "Prepared trusts both anchors again when the CA's ca.crt lost the new one",
            given: || World {
                trusted: ids(&[OLD]),
                ..World::in_phase(Phase::Prepared)
            },
            now: at(hours(1)),
            actions: &["TrustBoth"],
            waiting: (Gate::TargetsHoldNew, None),
            phase: Phase::Prepared,
            then: |w| assert_eq!(w.trusted, ids(&[OLD, NEW])),
        },
        Case {
            name: "Prepared waits out the propagation delay counted from when the targets were seen holding both",
            given: || {
                let mut w = World::in_phase(Phase::Prepared);
                w.bundle_pass();
                w
            },
            now: at(hours(1)),
            actions: &["None"],
            waiting: (Gate::PropagationDelay, Some(at(hours(1) + minutes(10)))),
            phase: Phase::Prepared,
            then: |w| {
                assert_eq!(w.persisted.targets_since, Some(at(hours(1))));
                assert_eq!(
                    w.run_until_waiting(at(hours(1) + minutes(9))),
                    (Gate::PropagationDelay, Some(at(hours(1) + minutes(10)))),
                    "the delay counts from the first sighting, not the last"
                );
                let seen = w.log.len();
                assert_eq!(
                    w.run_until_waiting(at(hours(1) + minutes(10))),
                    (Gate::IssuerReissued, None)
                );
                assert_eq!(actions(w, seen), ["None", "SwitchSigner"]);
                assert_eq!(w.persisted.phase, Phase::Propagated);
                assert_eq!(w.persisted.since, at(hours(1) + minutes(10)));
                assert_eq!(w.persisted.targets_since, None);
            },
        },
        Case {
            name: "a target that loses the new anchor restarts the propagation delay",
            given: || {
                let mut w = World::in_phase(Phase::Prepared);
                w.persisted.targets_since = Some(t0());
                w.targets = vec![ids(&[OLD]), ids(&[OLD, NEW])];
                w
            },
            now: at(minutes(5)),
            actions: &[],
            waiting: (Gate::TargetsHoldNew, None),
            phase: Phase::Prepared,
            then: |w| {
                assert_eq!(w.persisted.targets_since, None, "the sighting is forgotten");
                w.bundle_pass();
                assert_eq!(
                    w.run_until_waiting(at(minutes(8))),
                    (Gate::PropagationDelay, Some(at(minutes(18)))),
                    "the delay counts again from the new sighting"
                );
                assert_eq!(
                    w.run_until_waiting(at(minutes(12))),
                    (Gate::PropagationDelay, Some(at(minutes(18))))
                );
            },
        },
        Case {
            name: "Propagated switches the signer and waits for the issuer to be re-issued",
            given: || World::in_phase(Phase::Propagated),
            now: at(minutes(1)),
            actions: &["SwitchSigner"],
            waiting: (Gate::IssuerReissued, None),
            phase: Phase::Propagated,
            then: |w| {
                assert_eq!(w.signer, NEW);
                assert_eq!(w.trusted, ids(&[OLD, NEW]), "both still trusted");
                assert_eq!(w.persisted.switched_at, None);
            },
        },
        Case {
            name: "an issuer re-issued under the new anchor moves Propagated to IssuerSwitched, the drain counted from then",
            given: || World {
                signer: NEW.into(),
                issuer_anchor: Some(NEW.into()),
                certificates_on_old: 2,
                ..World::in_phase(Phase::Propagated)
            },
            now: at(hours(2)),
            actions: &["None"],
            waiting: (Gate::CertificatesReissued, None),
            phase: Phase::IssuerSwitched,
            then: |w| {
                assert_eq!(w.persisted.switched_at, Some(at(hours(2))));
                assert_eq!(w.persisted.since, at(hours(2)));
            },
        },
        Case {
            name: "IssuerSwitched waits for every Certificate to chain to the new anchor",
            given: || World {
                certificates_on_old: 3,
                ..World::in_phase(Phase::IssuerSwitched)
            },
            now: at(hours(30)),
            actions: &[],
            waiting: (Gate::CertificatesReissued, None),
            phase: Phase::IssuerSwitched,
            then: |w| {
                w.certificates_on_old = 0;
                let seen = w.log.len();
                assert_eq!(
                    w.run_until_waiting(at(hours(30))),
                    (Gate::TargetsDropOld, None)
                );
                assert_eq!(actions(w, seen), ["DropOld"]);
                assert_eq!(w.persisted.phase, Phase::Drained);
            },
        },
        Case {
            name: "IssuerSwitched waits for leaves issued under the old anchor to expire (leaf lifetime plus skew after the switch)",
            given: || World::in_phase(Phase::IssuerSwitched),
            now: at(hours(1)),
            actions: &[],
            waiting: (Gate::LeavesExpired, Some(at(hours(24 + 1)))),
            phase: Phase::IssuerSwitched,
            then: |w| {
                assert_eq!(
                    w.run_until_waiting(at(hours(25)) - TimeDelta::seconds(1)),
                    (Gate::LeavesExpired, Some(at(hours(25))))
                );
                assert_eq!(
                    w.trusted,
                    ids(&[OLD, NEW]),
                    "the old anchor is still trusted"
                );
                let seen = w.log.len();
                assert_eq!(
                    w.run_until_waiting(at(hours(25))),
                    (Gate::TargetsDropOld, None)
                );
                assert_eq!(actions(w, seen), ["DropOld"]);
            },
        },
        Case {
            name: "IssuerSwitched switches the signer again when it was moved back by hand",
            given: || World {
                signer: OLD.into(),
                ..World::in_phase(Phase::IssuerSwitched)
            },
            now: at(hours(1)),
            actions: &["SwitchSigner"],
            waiting: (Gate::LeavesExpired, Some(at(hours(25)))),
            phase: Phase::IssuerSwitched,
            then: |w| assert_eq!(w.signer, NEW),
        },
        Case {
            name: "Drained removes the old anchor and waits for the targets to drop it",
            given: || World::in_phase(Phase::IssuerSwitched),
            now: at(hours(25)),
            actions: &["DropOld"],
            waiting: (Gate::TargetsDropOld, None),
            phase: Phase::Drained,
            then: |w| {
                assert_eq!(w.trusted, ids(&[NEW]));
                assert_eq!(w.prepared, None, "the prepared copy is discarded");
                assert_eq!(w.persisted.since, at(hours(25)));
                assert_eq!(
                    w.run_until_waiting(at(hours(26))),
                    (Gate::TargetsDropOld, None),
                    "targets still holding the old anchor keep Drained waiting"
                );
                w.bundle_pass();
                let seen = w.log.len();
                assert_eq!(
                    w.run_until_waiting(at(hours(27))),
                    (Gate::AnchorRenewal, Some(at(days(NEW_RENEWAL_DAYS))))
                );
                assert_eq!(actions(w, seen), ["None"]);
                assert_eq!(w.persisted.phase, Phase::Stable);
                assert_eq!(w.persisted.current, NEW);
                assert_eq!(w.persisted.completed, 1);
                assert_eq!(w.persisted.since, at(hours(27)));
            },
        },
        Case {
            name: "Drained drops the old anchor again when the CA's ca.crt still holds it",
            given: || World {
                trusted: ids(&[OLD, NEW]),
                prepared: Some(NEW.into()),
                ..World::in_phase(Phase::Drained)
            },
            now: at(hours(1)),
            actions: &["DropOld"],
            waiting: (Gate::TargetsDropOld, None),
            phase: Phase::Drained,
            then: |w| {
                assert_eq!(w.trusted, ids(&[NEW]));
                assert_eq!(w.prepared, None);
            },
        },
        Case {
            name: "a target holding only the old anchor keeps Drained waiting",
            given: || World {
                targets: vec![ids(&[NEW]), ids(&[OLD])],
                ..World::in_phase(Phase::Drained)
            },
            now: at(hours(1)),
            actions: &[],
            waiting: (Gate::TargetsDropOld, None),
            phase: Phase::Drained,
            then: nothing_more,
        },
        Case {
            name: "a prepared anchor left by a finished rotation is discarded",
            given: || World {
                prepared: Some(OLD.into()),
                ..World::stable()
            },
            now: t0(),
            actions: &["DiscardPrepared"],
            waiting: (Gate::AnchorRenewal, Some(at(days(OLD_RENEWAL_DAYS)))),
            phase: Phase::Stable,
            then: |w| {
                assert_eq!(w.prepared, None);
                assert!(w.generated.is_empty());
            },
        },
        Case {
            name: "an anchor replaced by hand while stable is adopted as current",
            given: || {
                let mut w = World::stable();
                w.signer = "by-hand".into();
                w.trusted = ids(&["by-hand"]);
                w.renewal.insert("by-hand".into(), at(days(100)));
                w
            },
            now: at(days(OLD_RENEWAL_DAYS)),
            actions: &["None"],
            waiting: (Gate::AnchorRenewal, Some(at(days(100)))),
            phase: Phase::Stable,
            then: |w| {
                assert_eq!(w.persisted.current, "by-hand");
                assert_eq!(w.persisted.completed, 0);
                assert!(
                    w.generated.is_empty(),
                    "no rotation: the old anchor's time is moot"
                );
            },
        },
    ];
    for case in cases {
        let mut world = (case.given)();
        let got = world.run_until_waiting(case.now);
        assert_eq!(
            got, case.waiting,
            "{}: waiting, after {:?}",
            case.name, world.log
        );
        assert_eq!(actions(&world, 0), case.actions, "{}: actions", case.name);
        assert_eq!(world.persisted.phase, case.phase, "{}: phase", case.name);
        (case.then)(&mut world);
    }
}

#[test]
fn a_full_rotation_ends_stable_with_the_new_anchor_current_one_anchor_generated_completed_incremented()
 {
    for manual in [false, true] {
        let mut world = World {
            requested: manual,
            ..World::stable()
        };
        let crashed = world.rotate_to_the_end(t0(), None, manual);
        assert!(!crashed);
        world.assert_rotated_once(if manual { "by hand" } else { "on schedule" });
        let phases: Vec<Phase> = world.log.iter().map(|s| s.to).collect();
        let mut visited = phases.clone();
        visited.dedup();
        assert_eq!(
            visited,
            [
                Phase::Stable,
                Phase::Prepared,
                Phase::Propagated,
                Phase::IssuerSwitched,
                Phase::Drained,
                Phase::Stable
            ],
            "{:?}",
            world.log
        );
    }
}

fn step(from: Phase, action: &'static str, to: Phase) -> Step {
    Step { from, action, to }
}

/// Every step of a rotation, the place a crash may hit.
fn crash_points() -> Vec<(&'static str, Step)> {
    use Phase::*;
    vec![
        (
            "a crash after GenerateNext, in the gap before Prepared is persisted",
            step(Stable, "GenerateNext", Stable),
        ),
        (
            "a crash after TrustBoth, entering Prepared",
            step(Stable, "TrustBoth", Prepared),
        ),
        (
            "a crash after the targets were first seen holding both anchors",
            step(Prepared, "None", Prepared),
        ),
        (
            "a crash entering Propagated",
            step(Prepared, "None", Propagated),
        ),
        (
            "a crash after SwitchSigner, in Propagated",
            step(Propagated, "SwitchSigner", Propagated),
        ),
        (
            "a crash entering IssuerSwitched",
            step(Propagated, "None", IssuerSwitched),
        ),
        (
            "a crash after DropOld, entering Drained",
            step(IssuerSwitched, "DropOld", Drained),
        ),
        (
            "a crash entering Stable again",
            step(Drained, "None", Stable),
        ),
    ]
}

#[test]
fn a_crash_at_any_step_then_a_restart_completes_the_rotation_with_one_anchor_generated() {
    for manual in [false, true] {
        for (name, at_step) in crash_points() {
            for persisted in [false, true] {
                let case = format!(
                    "{name}, {} persisting, {}",
                    if persisted { "after" } else { "before" },
                    if manual { "by hand" } else { "on schedule" }
                );
                let mut world = World {
                    requested: manual,
                    ..World::stable()
                };
                let crash = Crash {
                    when: When::Step(at_step),
                    persisted,
                };
                let crashed = world.rotate_to_the_end(t0(), Some(crash), manual);
                assert!(
                    crashed,
                    "{case}: the crash point was never reached: {:?}",
                    world.log
                );
                world.assert_rotated_once(&case);
            }
        }
    }
}

#[test]
fn the_crash_points_are_every_step_a_rotation_takes() {
    let mut world = World::stable();
    world.rotate_to_the_end(t0(), None, false);
    let mut taken = world.log.clone();
    taken.sort();
    taken.dedup();
    let mut named: Vec<Step> = crash_points().into_iter().map(|(_, s)| s).collect();
    named.sort();
    assert_eq!(named, taken);
}

#[test]
fn a_crash_at_the_nth_step_of_a_rotation_then_a_restart_completes_it_with_one_anchor_generated() {
    let mut clean = World::stable();
    clean.rotate_to_the_end(t0(), None, false);
    for n in 0..clean.log.len() {
        for persisted in [false, true] {
            let mut world = World::stable();
            let crash = Crash {
                when: When::Nth(n),
                persisted,
            };
            assert!(world.rotate_to_the_end(t0(), Some(crash), false));
            world.assert_rotated_once(&format!("a crash at step {n} ({persisted})"));
        }
    }
}

#[test]
fn a_manual_rotation_is_refused_while_one_is_under_way() {
    for phase in Phase::ALL {
        let state = World::in_phase(phase).persisted;
        let got = may_rotate(&state);
        if phase == Phase::Stable {
            assert_eq!(got, Ok(()), "{phase}");
            continue;
        }
        let Err(error) = got else {
            panic!("{phase}: a manual rotation was allowed mid-rotation");
        };
        assert_eq!(error, RotateError::InProgress { phase, since: t0() });
        let message = error.to_string();
        assert!(
            message.contains(&format!("phase {phase}")),
            "{phase}: {message}"
        );
        let since = t0().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        assert!(message.contains(&since), "{phase}: {message}");
    }
}

#[test]
fn a_rotation_state_survives_json() {
    let cases = [
        ("a stable state", Rotation::stable(OLD.into(), t0())),
        (
            "a state with every field set",
            Rotation {
                phase: Phase::IssuerSwitched,
                since: at(hours(3)),
                current: OLD.into(),
                next: Some(NEW.into()),
                trigger: Some(Trigger::Manual),
                targets_since: Some(at(hours(1))),
                switched_at: Some(at(hours(2))),
                completed: 7,
            },
        ),
    ];
    for (name, state) in &cases {
        let json = serde_json::to_string(state).expect("serializes");
        let back: Rotation = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(&back, state, "{name}: {json}");
    }
    let full = serde_json::to_value(&cases[1].1).expect("serializes");
    for field in [
        "phase",
        "since",
        "current",
        "next",
        "trigger",
        "targetsSince",
        "switchedAt",
        "completed",
    ] {
        assert!(full.get(field).is_some(), "{field} in {full}");
    }
    assert_eq!(full["phase"], "IssuerSwitched");
    let stable = serde_json::to_value(&cases[0].1).expect("serializes");
    for absent in ["next", "trigger", "targetsSince", "switchedAt"] {
        assert!(stable.get(absent).is_none(), "{absent} in {stable}");
    }
    let without_count: Rotation = serde_json::from_str(
        r#"{"phase":"Stable","since":"2026-06-01T12:00:00Z","current":"old"}"#,
    )
    .expect("a state written before `completed` existed");
    assert_eq!(without_count, Rotation::stable(OLD.into(), t0()));
}

#[test]
fn every_phase_reads_back_from_its_name() {
    for phase in Phase::ALL {
        assert_eq!(Phase::from_str(phase.as_str()), Ok(phase));
        assert_eq!(phase.to_string(), phase.as_str());
    }
    let err = Phase::from_str("Draining").expect_err("not a phase");
    assert!(err.contains("`Draining`"), "{err}");
}
