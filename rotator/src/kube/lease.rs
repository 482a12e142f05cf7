//! One active controller: a `coordination.k8s.io/v1` Lease, held as
//! client-go's leader election holds it (kube-runtime has no helper).
//!
//! The decision — acquire, renew or wait — is [`lease_decision`], a pure
//! function of the Lease and `now`; [`LeaseLock`] only reads the Lease,
//! asks, and writes with the read `resourceVersion`, so two replicas racing
//! for an expired Lease cannot both win.

use std::time::Duration;

use ::kube::Client;
use ::kube::api::{Api, PostParams};
use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;

/// The Lease's default name.
pub const DEFAULT_LEASE_NAME: &str = "lanyard-controller";
/// How long a Lease stays valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(5);
/// How long the holder keeps leading while renewals fail, before it stops
/// (shorter than [`LEASE_DURATION`], so it stops before another replica
/// may take over, as client-go's `RenewDeadline`).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// What to do about the Lease now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Another replica holds it until `until`.
    Wait {
        /// The current holder.
        holder: String,
        /// When its lease expires unless renewed.
        until: DateTime<Utc>,
    },
}

/// Decides whether `me` may hold the Lease `current` at `now`: renew our
/// own while `leading`, take one that is free or expired, wait for any
/// other. A Lease that still names `me` while this replica is not leading
/// (it lost the Lease, or restarted under the same name) is taken afresh,
/// so its `acquireTime` starts a new term. A Lease without a renew (or
/// acquire) time counts as expired; one without a duration lasts
/// [`LEASE_DURATION`].
pub fn lease_decision(
    current: Option<&LeaseSpec>,
    me: &str,
    leading: bool,
    now: DateTime<Utc>,
) -> LeaseDecision {
    let Some(spec) = current else {
        return LeaseDecision::Acquire;
    };
    let holder = match spec.holder_identity.as_deref() {
        None | Some("") => return LeaseDecision::Acquire,
        Some(holder) if holder == me && leading => return LeaseDecision::Renew,
        Some(holder) if holder == me => return LeaseDecision::Acquire,
        Some(holder) => holder,
    };
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .and_then(from_micro_time);
    let Some(renewed) = renewed else {
        return LeaseDecision::Acquire;
    };
    let duration = spec
        .lease_duration_seconds
        .filter(|s| *s > 0)
        .map_or(TimeDelta::seconds(LEASE_DURATION.as_secs() as i64), |s| {
            TimeDelta::seconds(i64::from(s))
        });
    let until = renewed + duration;
    if now >= until {
        LeaseDecision::Acquire
    } else {
        LeaseDecision::Wait {
            holder: holder.to_string(),
            until,
        }
    }
}

/// The spec to write after `decision` (`Acquire` or `Renew`); `None` for
/// `Wait`.
pub fn next_lease_spec(
    current: Option<&LeaseSpec>,
    decision: &LeaseDecision,
    me: &str,
    duration: Duration,
    now: DateTime<Utc>,
) -> Option<LeaseSpec> {
    let now_micro = to_micro_time(now);
    let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX);
    let previous = current.cloned().unwrap_or_default();
    match decision {
        LeaseDecision::Wait { .. } => None,
        LeaseDecision::Renew => Some(LeaseSpec {
            holder_identity: Some(me.to_string()),
            lease_duration_seconds: Some(seconds),
            renew_time: Some(now_micro.clone()),
            acquire_time: previous.acquire_time.clone().or(Some(now_micro)),
            ..previous
        }),
        LeaseDecision::Acquire => {
            let changed_hands = previous
                .holder_identity
                .as_deref()
                .is_some_and(|h| !h.is_empty() && h != me);
            Some(LeaseSpec {
                holder_identity: Some(me.to_string()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now_micro.clone()),
                renew_time: Some(now_micro),
                lease_transitions: Some(
                    previous.lease_transitions.unwrap_or(0) + i32::from(changed_hands),
                ),
                ..previous
            })
        }
    }
}

fn to_micro_time(t: DateTime<Utc>) -> MicroTime {
    // Every DateTime<Utc> chrono can hold at microsecond precision fits in
    // jiff's range for the years a Lease is written in; fall back to the
    // epoch rather than panic for the ones that do not.
    MicroTime(Timestamp::from_microsecond(t.timestamp_micros()).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn from_micro_time(t: &MicroTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(t.0.as_microsecond())
}

/// Why the Lease could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("Lease `{namespace}/{name}`: {action}: {source}")]
pub struct LeaseError {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// What was being done.
    pub action: &'static str,
    /// The API error.
    #[source]
    pub source: ::kube::Error,
}

/// Who this replica is and which Lease it competes for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElection {
    /// The namespace of the Lease (the controller's own).
    pub namespace: String,
    /// The Lease's name.
    pub lease_name: String,
    /// This replica's `holderIdentity`: the pod name.
    pub identity: String,
    /// `leaseDurationSeconds`.
    pub lease_duration: Duration,
    /// How often to renew (and to retry acquiring).
    pub renew_interval: Duration,
    /// How long to keep leading while renewals fail.
    pub renew_deadline: Duration,
}

impl LeaderElection {
    /// The defaults: Lease [`DEFAULT_LEASE_NAME`] in `namespace`, 15s
    /// lease, renewed every 5s.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaderElection {
            namespace: namespace.into(),
            lease_name: DEFAULT_LEASE_NAME.to_string(),
            identity: identity.into(),
            lease_duration: LEASE_DURATION,
            renew_interval: RENEW_INTERVAL,
            renew_deadline: RENEW_DEADLINE,
        }
    }
}

/// This replica's identity: `$POD_NAME` (from the downward API), else
/// `$HOSTNAME` (the pod name in a pod), else `lanyard-<pid>`.
pub fn default_identity() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| format!("lanyard-{}", std::process::id()))
}

/// The Lease, read and written on behalf of one identity.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    election: LeaderElection,
}

impl std::fmt::Debug for LeaseLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseLock")
            .field("election", &self.election)
            .finish_non_exhaustive()
    }
}

impl LeaseLock {
    /// The Lease `election` names.
    pub fn new(client: Client, election: LeaderElection) -> Self {
        LeaseLock {
            api: Api::namespaced(client, &election.namespace),
            election,
        }
    }

    /// The election settings.
    pub fn election(&self) -> &LeaderElection {
        &self.election
    }

    fn error(&self, action: &'static str, source: ::kube::Error) -> LeaseError {
        LeaseError {
            namespace: self.election.namespace.clone(),
            name: self.election.lease_name.clone(),
            action,
            source,
        }
    }

    /// Tries to take the Lease at `now` for a new term (this replica is not
    /// leading). Returns the decision; `Acquire` means this replica now
    /// holds the Lease. Losing a write race (409) is a `Wait`, not an error.
    pub async fn try_acquire(&self, now: DateTime<Utc>) -> Result<LeaseDecision, LeaseError> {
        self.write(now, false).await
    }

    /// Renews the Lease this replica leads with at `now`. `Renew` (or
    /// `Acquire`, when the Lease was given up meanwhile) means it still
    /// holds it; `Wait` means another replica took it.
    pub async fn try_renew(&self, now: DateTime<Utc>) -> Result<LeaseDecision, LeaseError> {
        self.write(now, true).await
    }

    async fn write(&self, now: DateTime<Utc>, leading: bool) -> Result<LeaseDecision, LeaseError> {
        let me = &self.election.identity;
        let existing = self
            .api
            .get_opt(&self.election.lease_name)
            .await
            .map_err(|e| self.error("reading", e))?;
        let decision = lease_decision(
            existing.as_ref().and_then(|l| l.spec.as_ref()),
            me,
            leading,
            now,
        );
        let current_spec = existing.as_ref().and_then(|l| l.spec.as_ref());
        let Some(spec) = next_lease_spec(
            current_spec,
            &decision,
            me,
            self.election.lease_duration,
            now,
        ) else {
            return Ok(decision);
        };
        let result = match existing {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.election.lease_name.clone()),
                        namespace: Some(self.election.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // replace carries metadata.resourceVersion: a concurrent
                // writer makes this fail with 409 instead of both winning.
                lease.spec = Some(spec);
                self.api
                    .replace(&self.election.lease_name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(decision),
            Err(::kube::Error::Api(status))
                if status.is_conflict() || status.is_already_exists() =>
            {
                // Another replica wrote first; look again next round.
                Ok(LeaseDecision::Wait {
                    holder: String::from("(another replica, which won a write race)"),
                    until: now,
                })
            }
            Err(e) => Err(self.error("writing", e)),
        }
    }

    /// Gives the Lease up (on shutdown) so another replica need not wait for
    /// it to expire; does nothing when someone else holds it.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.election.lease_name)
            .await
            .map_err(|e| self.error("reading", e))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.election.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        match self
            .api
            .replace(&self.election.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(::kube::Error::Api(status)) if status.is_conflict() => Ok(()),
            Err(e) => Err(self.error("releasing", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn held_by(holder: &str, renewed: &str, seconds: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(to_micro_time(t(renewed))),
            lease_duration_seconds: seconds,
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn acquiring_sets_times_and_counts_a_change_of_hands() {
        let now = t("2026-01-01T00:00:30Z");
        let old = held_by("b", "2026-01-01T00:00:00Z", Some(15));
        let spec = next_lease_spec(
            Some(&old),
            &LeaseDecision::Acquire,
            "a",
            LEASE_DURATION,
            now,
        )
        .unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(
            spec.renew_time.as_ref().and_then(from_micro_time),
            Some(now)
        );
        assert_eq!(
            spec.acquire_time.as_ref().and_then(from_micro_time),
            Some(now)
        );
    }

    #[test]
    fn renewing_keeps_the_acquire_time() {
        let acquired = t("2026-01-01T00:00:00Z");
        let now = t("2026-01-01T00:00:05Z");
        let mut old = held_by("a", "2026-01-01T00:00:00Z", Some(15));
        old.acquire_time = Some(to_micro_time(acquired));
        old.lease_transitions = Some(3);
        let spec =
            next_lease_spec(Some(&old), &LeaseDecision::Renew, "a", LEASE_DURATION, now).unwrap();
        assert_eq!(
            spec.acquire_time.as_ref().and_then(from_micro_time),
            Some(acquired)
        );
        assert_eq!(
            spec.renew_time.as_ref().and_then(from_micro_time),
            Some(now)
        );
        assert_eq!(spec.lease_transitions, Some(3));
    }

    #[test]
    fn a_replica_that_lost_the_lease_and_takes_it_again_starts_a_new_term() {
        let acquired = t("2026-01-01T00:00:00Z");
        let mut old = held_by("a", "2026-01-01T00:00:05Z", Some(15));
        old.acquire_time = Some(to_micro_time(acquired));
        old.lease_transitions = Some(2);
        // a stopped leading (renewals failed past the deadline); the Lease
        // still names it, expired or not. Taking it again is an
        // acquisition: a fresh acquireTime, the same holder, so no
        // transition.
        for now in ["2026-01-01T00:00:12Z", "2026-01-01T00:01:00Z"] {
            let now = t(now);
            let decision = lease_decision(Some(&old), "a", false, now);
            assert_eq!(decision, LeaseDecision::Acquire, "at {now}");
            let spec = next_lease_spec(Some(&old), &decision, "a", LEASE_DURATION, now).unwrap();
            assert_eq!(
                spec.acquire_time.as_ref().and_then(from_micro_time),
                Some(now)
            );
            assert_eq!(spec.lease_transitions, Some(2));
        }
        // While it leads, the same Lease is renewed.
        assert_eq!(
            lease_decision(Some(&old), "a", true, t("2026-01-01T00:00:10Z")),
            LeaseDecision::Renew
        );
    }

    #[test]
    fn waiting_writes_nothing() {
        let wait = LeaseDecision::Wait {
            holder: "b".into(),
            until: t("2026-01-01T00:00:15Z"),
        };
        assert_eq!(
            next_lease_spec(None, &wait, "a", LEASE_DURATION, t("2026-01-01T00:00:00Z")),
            None
        );
    }
}
