//! How many `Certify` calls one identity may make: a token bucket per
//! identity on the injected clock. [`take`] is the decision, a pure
//! function of one bucket, the limit and `now`; [`RateLimiter`] keeps the
//! buckets, bounded in number.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};

/// How many `Certify` calls one identity may make: a burst, then one per
/// interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Calls an identity may make at once.
    pub burst: u32,
    /// One more call is allowed each interval.
    pub interval: TimeDelta,
}

impl Default for RateLimit {
    /// A burst of 10, then one a second. An agent refreshes a 24h
    /// certificate every ~17h; a loop of requests is a bug or an attack.
    fn default() -> Self {
        RateLimit {
            burst: 10,
            interval: TimeDelta::seconds(1),
        }
    }
}

/// One identity's bucket: the tokens left, and when the refill clock last
/// moved (a full bucket's clock starts at its first use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Calls left.
    pub tokens: u32,
    /// When the refill clock last moved.
    pub at: DateTime<Utc>,
}

impl Bucket {
    /// A full bucket, as an identity's first call finds it.
    pub fn full(limit: RateLimit, now: DateTime<Utc>) -> Self {
        Bucket {
            tokens: limit.burst,
            at: now,
        }
    }

    /// Whether the bucket has refilled by `now`, so forgetting it changes
    /// nothing.
    pub fn is_full_at(&self, limit: RateLimit, now: DateTime<Utc>) -> bool {
        self.tokens + refill(limit, self.at, now) >= limit.burst
    }
}

/// Takes a token from `bucket` at `now`: the bucket afterwards, and
/// `Err(wait)` when none was left (the bucket then only refilled).
pub fn take(
    mut bucket: Bucket,
    limit: RateLimit,
    now: DateTime<Utc>,
) -> (Bucket, Result<(), TimeDelta>) {
    let refilled = refill(limit, bucket.at, now);
    if refilled > 0 {
        bucket.tokens = (bucket.tokens + refilled).min(limit.burst);
        bucket.at += limit.interval * refilled as i32;
    }
    if bucket.tokens == 0 {
        return (bucket, Err(bucket.at + limit.interval - now));
    }
    bucket.tokens -= 1;
    if bucket.tokens + 1 == limit.burst {
        // A full bucket's clock starts at its first use.
        bucket.at = now;
    }
    (bucket, Ok(()))
}

/// Whole intervals between `at` and `now`, capped at the burst.
fn refill(limit: RateLimit, at: DateTime<Utc>, now: DateTime<Utc>) -> u32 {
    let elapsed = (now - at).num_milliseconds().max(0);
    let interval = limit.interval.num_milliseconds().max(1);
    u32::try_from(elapsed / interval)
        .unwrap_or(u32::MAX)
        .min(limit.burst)
}

/// At most this many identities are tracked; idle full buckets are
/// dropped first.
const MAX_TRACKED: usize = 100_000;

/// The buckets of every identity seen, at most [`MAX_TRACKED`].
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    pub(crate) limit: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes a token for `identity` at `now`; `Err(wait)` when none is left.
    pub(crate) fn take(&self, identity: &str, now: DateTime<Utc>) -> Result<(), TimeDelta> {
        let limit = self.limit;
        // A panic elsewhere while holding the lock leaves whole buckets
        // behind: every write below is a single assignment.
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(identity) {
            // Forget identities whose buckets have refilled; if every one
            // is still busy, a new identity waits rather than growing the
            // map past its bound.
            buckets.retain(|_, bucket| !bucket.is_full_at(limit, now));
            if buckets.len() >= MAX_TRACKED {
                return Err(limit.interval);
            }
        }
        let bucket = buckets
            .entry(identity.to_string())
            .or_insert_with(|| Bucket::full(limit, now));
        let (after, result) = take(*bucket, limit, now);
        *bucket = after;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_900_000_000 + seconds, 0).unwrap()
    }

    const LIMIT: RateLimit = RateLimit {
        burst: 3,
        interval: TimeDelta::seconds(1),
    };

    #[test]
    fn a_bucket_allows_a_burst_then_one_call_per_interval() {
        for (case, before, now, after, result) in [
            (
                "a first call takes one token and starts the refill clock",
                Bucket::full(LIMIT, t(0)),
                t(5),
                Bucket {
                    tokens: 2,
                    at: t(5),
                },
                Ok(()),
            ),
            (
                "the last token is taken",
                Bucket {
                    tokens: 1,
                    at: t(0),
                },
                t(0),
                Bucket {
                    tokens: 0,
                    at: t(0),
                },
                Ok(()),
            ),
            (
                "an empty bucket refuses and says how long to wait",
                Bucket {
                    tokens: 0,
                    at: t(0),
                },
                t(0) + TimeDelta::milliseconds(400),
                Bucket {
                    tokens: 0,
                    at: t(0),
                },
                Err(TimeDelta::milliseconds(600)),
            ),
            (
                "one interval later one call is allowed",
                Bucket {
                    tokens: 0,
                    at: t(0),
                },
                t(1),
                Bucket {
                    tokens: 0,
                    at: t(1),
                },
                Ok(()),
            ),
            (
                "a long pause refills only up to the burst",
                Bucket {
                    tokens: 0,
                    at: t(0),
                },
                t(3600),
                Bucket {
                    tokens: 2,
                    at: t(3600),
                },
                Ok(()),
            ),
            (
                "a clock that went backwards refills nothing",
                Bucket {
                    tokens: 0,
                    at: t(10),
                },
                t(5),
                Bucket {
                    tokens: 0,
                    at: t(10),
                },
                Err(TimeDelta::seconds(6)),
            ),
        ] {
            assert_eq!(take(before, LIMIT, now), (after, result), "{case}");
        }
    }

    #[test]
    fn whether_a_bucket_can_be_forgotten() {
        for (case, bucket, now, full) in [
            (
                "an unused bucket is full",
                Bucket::full(LIMIT, t(0)),
                t(0),
                true,
            ),
            (
                "a bucket just used is not",
                Bucket {
                    tokens: 2,
                    at: t(0),
                },
                t(0),
                false,
            ),
            (
                "a used bucket refills in time",
                Bucket {
                    tokens: 0,
                    at: t(0),
                },
                t(3),
                true,
            ),
        ] {
            assert_eq!(bucket.is_full_at(LIMIT, now), full, "{case}");
        }
    }

    #[test]
    fn the_limiter_keeps_one_bucket_per_identity_and_survives_a_poisoned_lock() {
        let limiter = RateLimiter {
            limit: LIMIT,
            ..RateLimiter::default()
        };
        for _ in 0..3 {
            assert_eq!(limiter.take("a", t(0)), Ok(()));
        }
        assert!(limiter.take("a", t(0)).is_err());
        assert_eq!(
            limiter.take("b", t(0)),
            Ok(()),
            "another identity has its own bucket"
        );
        let limiter = std::sync::Arc::new(limiter);
        let poisoner = limiter.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.buckets.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(limiter.buckets.is_poisoned());
        assert_eq!(
            limiter.take("a", t(1)),
            Ok(()),
            "calls are still limited, not failed"
        );
    }
}
