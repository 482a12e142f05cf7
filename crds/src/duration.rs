//! Durations in Go's `time.ParseDuration` syntax (`24h`, `8760h`, `1h30m`,
//! `1.5h`, `300ms`), because that is how Linkerd and cert-manager users
//! write them, and printed as Go prints them (`8760h0m0s`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::quote::quoted;

/// Go's limit: a `time.Duration` is an `int64` of nanoseconds.
const MAX_NANOS: u64 = i64::MAX as u64;

const UNITS: [(&str, u64); 9] = [
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    // Filler so the table's length is fixed; never matches a real unit.
    ("", 0),
];

/// A non-negative duration written the way Go writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(Duration);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Nothing was given.
    #[error("empty duration; write it like `24h`, `8760h` or `1h30m`")]
    Empty,
    /// A negative duration, where only lifetimes and intervals make sense.
    #[error(
        "duration {} is negative; lifetimes and intervals cannot be",
        quoted(.input)
    )]
    Negative {
        /// The input.
        input: String,
    },
    /// A number without a unit.
    #[error("duration {} is missing a unit (ns, us, ms, s, m, h)", quoted(.input))]
    MissingUnit {
        /// The input.
        input: String,
    },
    /// A unit Go does not know.
    #[error(
        "duration {} has unknown unit {} (use ns, us, ms, s, m or h)",
        quoted(.input),
        quoted(.unit)
    )]
    UnknownUnit {
        /// The input.
        input: String,
        /// The unit found.
        unit: String,
    },
    /// Not a duration at all.
    #[error(
        "{} is not a duration; write it like `24h`, `8760h` or `1h30m`",
        quoted(.input)
    )]
    Invalid {
        /// The input.
        input: String,
    },
    /// Longer than Go can represent (about 292 years).
    #[error(
        "duration {} is too long (at most 2562047h47m16.854775807s)",
        quoted(.input)
    )]
    Overflow {
        /// The input.
        input: String,
    },
}

impl GoDuration {
    /// Wraps a standard duration.
    pub const fn from_std(d: Duration) -> Self {
        GoDuration(d)
    }

    /// A whole number of hours.
    pub const fn from_hours(h: u64) -> Self {
        GoDuration(Duration::from_secs(h * 3_600))
    }

    /// A whole number of seconds.
    pub const fn from_secs(s: u64) -> Self {
        GoDuration(Duration::from_secs(s))
    }

    /// The standard duration.
    pub const fn as_std(self) -> Duration {
        self.0
    }

    /// The same span as a chrono delta, for arithmetic with times.
    pub fn to_chrono(self) -> chrono::TimeDelta {
        chrono::TimeDelta::from_std(self.0).unwrap_or(chrono::TimeDelta::MAX)
    }
}

impl FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, DurationError> {
        let invalid = || DurationError::Invalid {
            input: input.to_string(),
        };
        let overflow = || DurationError::Overflow {
            input: input.to_string(),
        };
        let mut s = input;
        if s.is_empty() {
            return Err(DurationError::Empty);
        }
        if let Some(rest) = s.strip_prefix('-') {
            // "-0" is zero in Go; anything else below zero is refused.
            if rest.chars().all(|c| c == '0') && !rest.is_empty() {
                return Ok(GoDuration(Duration::ZERO));
            }
            return Err(DurationError::Negative {
                input: input.to_string(),
            });
        }
        if let Some(rest) = s.strip_prefix('+') {
            s = rest;
        }
        if s == "0" {
            return Ok(GoDuration(Duration::ZERO));
        }
        if s.is_empty() {
            return Err(invalid());
        }
        let mut total: u64 = 0;
        while !s.is_empty() {
            let first = s.as_bytes()[0];
            if !(first == b'.' || first.is_ascii_digit()) {
                return Err(invalid());
            }
            // Integer part.
            let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
            let mut whole: u64 = 0;
            for b in s[..int_len].bytes() {
                whole = whole
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                    .filter(|v| *v <= MAX_NANOS)
                    .ok_or_else(overflow)?;
            }
            s = &s[int_len..];
            // Fraction: digits past u64's precision are dropped, as in Go.
            let (mut frac, mut scale, mut frac_len) = (0u64, 1f64, 0usize);
            if let Some(rest) = s.strip_prefix('.') {
                s = rest;
                frac_len = s.bytes().take_while(u8::is_ascii_digit).count();
                let mut overflowed = false;
                for b in s[..frac_len].bytes() {
                    if overflowed {
                        continue;
                    }
                    match frac
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(b - b'0')))
                        .filter(|v| *v <= MAX_NANOS)
                    {
                        Some(v) => {
                            frac = v;
                            scale *= 10.0;
                        }
                        None => overflowed = true,
                    }
                }
                s = &s[frac_len..];
            }
            if int_len == 0 && frac_len == 0 {
                return Err(invalid());
            }
            let unit_len = s
                .char_indices()
                .find(|(_, c)| *c == '.' || c.is_ascii_digit())
                .map_or(s.len(), |(i, _)| i);
            if unit_len == 0 {
                return Err(DurationError::MissingUnit {
                    input: input.to_string(),
                });
            }
            let unit_name = &s[..unit_len];
            s = &s[unit_len..];
            let unit = UNITS
                .iter()
                .find(|(name, _)| !name.is_empty() && *name == unit_name)
                .map(|(_, nanos)| *nanos)
                .ok_or_else(|| DurationError::UnknownUnit {
                    input: input.to_string(),
                    unit: unit_name.to_string(),
                })?;
            let mut value = whole
                .checked_mul(unit)
                .filter(|v| *v <= MAX_NANOS)
                .ok_or_else(overflow)?;
            if frac > 0 {
                // Go truncates the fraction's nanoseconds toward zero.
                let extra = (frac as f64 * (unit as f64 / scale)) as u64;
                value = value
                    .checked_add(extra)
                    .filter(|v| *v <= MAX_NANOS)
                    .ok_or_else(overflow)?;
            }
            total = total
                .checked_add(value)
                .filter(|v| *v <= MAX_NANOS)
                .ok_or_else(overflow)?;
        }
        Ok(GoDuration(Duration::from_nanos(total)))
    }
}

impl fmt::Display for GoDuration {
    /// Go's `Duration.String()`: `8760h0m0s`, `1h30m0s`, `1.5s`, `300ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos < 1_000_000_000 {
            let (value, prec, unit) = if nanos < 1_000 {
                (nanos, 0, "ns")
            } else if nanos < 1_000_000 {
                (nanos, 3, "\u{b5}s")
            } else {
                (nanos, 6, "ms")
            };
            return write!(f, "{}{unit}", with_fraction(value, prec));
        }
        let secs = nanos / 1_000_000_000;
        let seconds = with_fraction(nanos % 60_000_000_000, 9);
        let minutes = secs / 60;
        if minutes == 0 {
            return write!(f, "{seconds}s");
        }
        let hours = minutes / 60;
        if hours == 0 {
            return write!(f, "{}m{seconds}s", minutes % 60);
        }
        write!(f, "{hours}h{}m{seconds}s", minutes % 60)
    }
}

/// `value / 10^prec` with the fraction's trailing zeros (and a bare point)
/// dropped, as Go's `fmtFrac` + `fmtInt` print it.
fn with_fraction(value: u64, prec: u32) -> String {
    let scale = 10u64.pow(prec);
    let (int, frac) = (value / scale, value % scale);
    if frac == 0 {
        return int.to_string();
    }
    let digits = format!("{frac:0width$}", width = prec as usize);
    format!("{int}.{}", digits.trim_end_matches('0'))
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// In a CRD schema a duration is a string in Go's syntax, checked by a
/// pattern so the API server refuses `1 year` before the controller sees it.
#[cfg(feature = "api")]
impl schemars::JsonSchema for GoDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "GoDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "maxLength": 64,
            "pattern": "^([0-9]+(\\.[0-9]+)?(ns|us|\u{b5}s|\u{3bc}s|ms|s|m|h))+$",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(nanos: u64) -> GoDuration {
        GoDuration(Duration::from_nanos(nanos))
    }

    const H: u64 = 3_600_000_000_000;
    const M: u64 = 60_000_000_000;
    const S: u64 = 1_000_000_000;

    #[test]
    fn parses_what_linkerd_and_cert_manager_users_write() {
        let cases = [
            ("parses a day in hours", "24h", d(24 * H)),
            ("parses a year written in hours", "8760h", d(8_760 * H)),
            ("parses ten years written in hours", "87600h", d(87_600 * H)),
            ("parses hours and minutes together", "1h30m", d(H + 30 * M)),
            ("parses a fractional hour", "1.5h", d(H + 30 * M)),
            ("parses milliseconds", "300ms", d(300_000_000)),
            (
                "parses every unit in one string",
                "2h45m30.5s",
                d(2 * H + 45 * M + 30 * S + S / 2),
            ),
            ("parses microseconds in ascii", "10us", d(10_000)),
            (
                "parses microseconds with the micro sign",
                "10\u{b5}s",
                d(10_000),
            ),
            (
                "parses microseconds with the greek mu",
                "10\u{3bc}s",
                d(10_000),
            ),
            ("parses nanoseconds", "7ns", d(7)),
            ("parses a bare zero", "0", d(0)),
            ("parses zero with a unit", "0s", d(0)),
            ("parses minus zero as zero", "-0", d(0)),
            ("parses an explicit plus sign", "+5m", d(5 * M)),
            ("parses a fraction without a leading digit", ".5s", d(S / 2)),
            ("parses a trailing point", "1.s", d(S)),
            ("truncates sub-nanosecond fractions", "1.0000000009s", d(S)),
            (
                "parses Go's largest duration",
                "2562047h47m16.854775807s",
                d(i64::MAX as u64),
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(input.parse::<GoDuration>(), Ok(want), "{name}: {input}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        type Check = fn(&DurationError) -> bool;
        let cases: [(&str, &str, Check); 10] = [
            ("refuses an empty string", "", |e| {
                matches!(e, DurationError::Empty)
            }),
            ("refuses a negative lifetime", "-24h", |e| {
                matches!(e, DurationError::Negative { .. })
            }),
            ("refuses a number without a unit", "24", |e| {
                matches!(e, DurationError::MissingUnit { .. })
            }),
            (
                "refuses days, which Go does not have",
                "30d",
                |e| matches!(e, DurationError::UnknownUnit { unit, .. } if unit == "d"),
            ),
            ("refuses an uppercase unit", "24H", |e| {
                matches!(e, DurationError::UnknownUnit { .. })
            }),
            ("refuses a unit alone", "h", |e| {
                matches!(e, DurationError::Invalid { .. })
            }),
            ("refuses a lone point", ".s", |e| {
                matches!(e, DurationError::Invalid { .. })
            }),
            ("refuses spaces", "1h 30m", |e| {
                matches!(e, DurationError::UnknownUnit { .. })
            }),
            ("refuses more than Go can hold", "2562048h", |e| {
                matches!(e, DurationError::Overflow { .. })
            }),
            ("refuses a sign alone", "+", |e| {
                matches!(e, DurationError::Invalid { .. })
            }),
        ];
        for (name, input, check) in cases {
            let err = input.parse::<GoDuration>().expect_err(name);
            assert!(check(&err), "{name}: {input}: {err:?}");
            assert!(
                err.to_string().contains(input) || input.is_empty(),
                "{name}: the error names the input"
            );
        }
    }

    #[test]
    fn prints_as_go_prints() {
        let cases = [
            (d(8_760 * H), "8760h0m0s"),
            (d(H + 30 * M), "1h30m0s"),
            (d(S + S / 2), "1.5s"),
            (d(300_000_000), "300ms"),
            (d(1_500), "1.5\u{b5}s"),
            (d(0), "0s"),
            (d(2 * H + 45 * M + 30 * S + S / 2), "2h45m30.5s"),
            (d(90 * S), "1m30s"),
            (d(7), "7ns"),
            (d(i64::MAX as u64), "2562047h47m16.854775807s"),
        ];
        for (value, want) in cases {
            assert_eq!(value.to_string(), want);
        }
    }

    #[test]
    fn serializes_as_the_go_string() {
        let v = serde_json::to_string(&GoDuration::from_hours(720)).unwrap();
        assert_eq!(v, "\"720h0m0s\"");
        let back: GoDuration = serde_json::from_str("\"720h\"").unwrap();
        assert_eq!(back, GoDuration::from_hours(720));
        let err = serde_json::from_str::<GoDuration>("\"720d\"").unwrap_err();
        assert!(err.to_string().contains("unknown unit"), "{err}");
    }

    proptest! {
        #[test]
        fn printing_then_parsing_gives_the_same_duration(nanos in 0u64..=i64::MAX as u64) {
            let value = d(nanos);
            prop_assert_eq!(value.to_string().parse::<GoDuration>(), Ok(value));
        }

        #[test]
        fn random_strings_never_panic(s in "\\PC{0,24}") {
            let _ = s.parse::<GoDuration>();
        }

        #[test]
        fn duration_shaped_strings_never_panic(s in "[-+]?[0-9.]{0,22}(ns|us|ms|s|m|h|d)?([0-9.]{0,5}(s|m|h))?") {
            let _ = s.parse::<GoDuration>();
        }
    }
}
