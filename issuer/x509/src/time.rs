//! Time as certificates see it: when one is due for renewal, and the
//! injected [`Clock`] as rustls' `TimeProvider`, so handshakes verify a
//! peer's validity at the same `now` every other decision uses.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use lanyard_crds::time::Clock;
use rustls::pki_types::UnixTime;

/// When a certificate valid from `not_before` to `not_after` is renewed:
/// `renew_before` ahead of its end when that is shorter than its life, else
/// at two thirds of its life; never before `not_before`. Whole seconds.
pub fn renewal_time(
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    renew_before: Option<TimeDelta>,
) -> DateTime<Utc> {
    let lifetime = not_after - not_before;
    let before = match renew_before {
        Some(before) if before > TimeDelta::zero() && before < lifetime => before,
        _ => lifetime / 3,
    };
    (not_after - before).max(not_before).trunc_subsecs(0)
}

/// A [`Clock`] as rustls' `TimeProvider`: configs built with
/// `builder_with_details(provider, Arc::new(ClockTime(clock)))` check
/// certificate validity at the clock's `now`, not the system's.
#[derive(Debug, Clone)]
pub struct ClockTime<C>(pub C);

impl<C: Clock> rustls::time_provider::TimeProvider for ClockTime<C> {
    fn current_time(&self) -> Option<UnixTime> {
        let seconds = u64::try_from(self.0.now().timestamp()).ok()?;
        Some(UnixTime::since_unix_epoch(Duration::from_secs(seconds)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_crds::time::ManualClock;
    use rustls::time_provider::TimeProvider;

    #[test]
    fn the_time_provider_reads_the_injected_clock() {
        let at: DateTime<Utc> = "2030-06-01T12:00:00Z".parse().unwrap();
        let clock = ManualClock::new(at);
        let time = ClockTime(&clock);
        assert_eq!(
            time.current_time().unwrap().as_secs(),
            at.timestamp() as u64
        );
        clock.advance(TimeDelta::days(400));
        assert_eq!(
            time.current_time().unwrap().as_secs(),
            (at + TimeDelta::days(400)).timestamp() as u64
        );
        let before_1970 = ManualClock::new("1969-12-31T23:59:59Z".parse().unwrap());
        assert!(ClockTime(before_1970).current_time().is_none());
    }
}
