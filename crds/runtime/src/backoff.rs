//! The one retry schedule: a delay that doubles from `min` to `max` and
//! starts again at `min` after a success.

use std::time::Duration;

/// Doubling delays between retries, capped. Every loop that can fail
/// (accepting connections, watching a Secret, asking an API server) waits
/// [`Backoff::next`] after a failure and calls [`Backoff::reset`] after a
/// success, so no error makes a loop spin.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Delays from `min`, doubling, up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.min(max);
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The schedule of accept loops: 5 ms doubling to 1 s.
    pub fn accept() -> Self {
        Backoff::new(Duration::from_millis(5), Duration::from_secs(1))
    }

    /// The delay after `failures` consecutive failures, as a pure function
    /// of the count, for callers that keep the count themselves (in a
    /// status, a map): zero for none, then `min`, doubling, up to `max`.
    pub fn delay_after(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let doublings = (failures - 1).min(31);
        self.min.saturating_mul(1_u32 << doublings).min(self.max)
    }

    /// The delay before the next retry; each call doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// After a success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_a_success_starts_again() {
        let mut backoff = Backoff::accept();
        let delays: Vec<u128> = (0..10).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(5));
    }

    #[test]
    fn the_delay_after_a_count_of_failures_follows_the_same_schedule() {
        let backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(3600));
        for (failures, seconds) in [
            (0, 0),           // no failure: no wait
            (1, 10),          // the first failure waits the minimum
            (2, 20),          // each further one doubles it
            (9, 2560),        // still under the cap
            (10, 3600),       // capped
            (u32::MAX, 3600), // a count that would overflow a shift is capped too
        ] {
            assert_eq!(
                backoff.delay_after(failures),
                Duration::from_secs(seconds),
                "{failures}"
            );
        }
        let mut stateful = Backoff::accept();
        for failures in 1..12 {
            assert_eq!(
                stateful.next_delay(),
                Backoff::accept().delay_after(failures)
            );
        }
    }

    #[test]
    fn a_minimum_above_the_maximum_is_the_maximum() {
        let mut backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(backoff.next_delay(), Duration::from_secs(1));
        assert_eq!(backoff.next_delay(), Duration::from_secs(1));
    }
}
