//! Human-readable durations as written in rollout specs: `500ms`, `10s`, `1m`, `1h`, and
//! combinations such as `1m30s`.
//!
//! Owns parsing and formatting only. A [`HumanDuration`] is always stored as whole milliseconds
//! and serializes back to the shortest string that means the same thing, so a spec stored as JSON
//! reads like the YAML it came from.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A positive span of time parsed from a string such as `1m30s`.
///
/// Values built in code with [`HumanDuration::from_millis`] may be zero; validation of a spec
/// rejects that, parsing a string never produces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration {
    ms: u64,
}

/// Why a duration string was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty or only whitespace.
    #[error("empty duration")]
    Empty,
    /// The string started with `-`.
    #[error("duration must be positive")]
    Negative,
    /// The string parsed to zero.
    #[error("duration must be greater than zero")]
    Zero,
    /// The string was not a sequence of `<integer><unit>` parts.
    #[error("invalid duration {0:?}: expected e.g. 500ms, 10s, 1m, 1h or 1m30s")]
    Invalid(String),
    /// The value does not fit in 64-bit milliseconds.
    #[error("duration is too large")]
    Overflow,
}

impl HumanDuration {
    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self { ms }
    }

    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self {
            ms: secs.saturating_mul(1000),
        }
    }

    /// The duration in whole milliseconds.
    pub const fn as_millis(&self) -> u64 {
        self.ms
    }

    /// The duration in seconds, rounded down.
    pub const fn as_secs(&self) -> u64 {
        self.ms / 1000
    }

    /// True when the duration is zero (only possible for values built in code).
    pub const fn is_zero(&self) -> bool {
        self.ms == 0
    }
}

impl From<std::time::Duration> for HumanDuration {
    fn from(d: std::time::Duration) -> Self {
        Self {
            ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl From<HumanDuration> for std::time::Duration {
    fn from(d: HumanDuration) -> Self {
        std::time::Duration::from_millis(d.ms)
    }
}

/// [`parse_duration`] as a [`std::time::Duration`]: the parser of every duration flag
/// (clap's `value_parser`).
///
/// # Errors
/// As [`parse_duration`].
pub fn parse_std_duration(input: &str) -> Result<std::time::Duration, DurationError> {
    parse_duration(input).map(std::time::Duration::from)
}

/// The parser of every timeout and interval flag (clap's `value_parser`): a duration with
/// units (`30s`, `1m30s`, `500ms`, as [`parse_duration`]), or a bare number of milliseconds, as
/// the `--*-ms` flags these flags were named before took (each keeps that name as an alias).
///
/// # Errors
/// As [`parse_duration`]; [`DurationError::Zero`] for `0`.
pub fn parse_flag_duration(input: &str) -> Result<std::time::Duration, DurationError> {
    let s = input.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let ms: u64 = s.parse().map_err(|_| DurationError::Overflow)?;
        if ms == 0 {
            return Err(DurationError::Zero);
        }
        return Ok(std::time::Duration::from_millis(ms));
    }
    parse_std_duration(s)
}

/// Parses a duration string.
///
/// Accepts one or more `<integer><unit>` parts with units `ms`, `s`, `m`, `h` (for example
/// `1h30m`, `1m30s`, `1s500ms`). Errors: [`DurationError::Empty`] for an empty string,
/// [`DurationError::Negative`] for a leading `-`, [`DurationError::Zero`] when the total is
/// zero, [`DurationError::Invalid`] for anything else that is not of that form.
pub fn parse_duration(input: &str) -> Result<HumanDuration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative);
    }
    let invalid = || DurationError::Invalid(input.to_string());
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: u64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(invalid());
        }
        let number: u64 = s[start..i].parse().map_err(|_| DurationError::Overflow)?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let factor: u64 = match &s[unit_start..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(invalid()),
        };
        let part = number.checked_mul(factor).ok_or(DurationError::Overflow)?;
        total = total.checked_add(part).ok_or(DurationError::Overflow)?;
    }
    if total == 0 {
        return Err(DurationError::Zero);
    }
    Ok(HumanDuration { ms: total })
}

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s)
    }
}

impl fmt::Display for HumanDuration {
    /// Formats as the shortest combination of `h`, `m`, `s` and `ms` parts, e.g. `1m30s`;
    /// zero is `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ms == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.ms;
        for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            let n = rest / size;
            if n > 0 {
                write!(f, "{n}{unit}")?;
                rest -= n * size;
            }
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// In a CRD schema a duration is a string such as `30s`, `1m` or `1h30m`.
#[cfg(feature = "schema")]
impl schemars::JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration: 500ms, 10s, 1m, 1h30m."
        })
    }
}

/// Formats whole seconds the way people read them: `25m`, `1h30m`, `45s`, `0s`.
pub fn format_seconds(secs: u64) -> String {
    HumanDuration::from_secs(secs).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_takes_units_or_a_bare_number_of_milliseconds() {
        use std::time::Duration;
        assert_eq!(parse_flag_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_flag_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_flag_duration("1500"), Ok(Duration::from_millis(1500)));
        assert_eq!(
            parse_flag_duration(" 250ms "),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(parse_flag_duration("0"), Err(DurationError::Zero));
        assert!(parse_flag_duration("").is_err());
        assert!(parse_flag_duration("5 s").is_err());
        assert!(parse_flag_duration("-5s").is_err());
        assert!(parse_flag_duration("99999999999999999999").is_err());
    }

    #[test]
    fn parses_units_and_combinations() {
        let cases = [
            ("500ms", 500),
            ("10s", 10_000),
            ("1m", 60_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("1h1m1s1ms", 3_661_001),
            (" 2m ", 120_000),
        ];
        for (s, ms) in cases {
            assert_eq!(parse_duration(s).map(|d| d.as_millis()), Ok(ms), "{s}");
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("-1s"), Err(DurationError::Negative));
        assert_eq!(parse_duration("0s"), Err(DurationError::Zero));
        assert_eq!(parse_duration("0m0s"), Err(DurationError::Zero));
        for bad in ["10", "s", "1x", "1.5s", "1 s", "m1", "1d"] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::Invalid(_))),
                "{bad}"
            );
        }
        assert_eq!(
            parse_duration("99999999999999999999h"),
            Err(DurationError::Overflow)
        );
        assert_eq!(
            parse_duration("9999999999999999h"),
            Err(DurationError::Overflow)
        );
    }

    #[test]
    fn formats_round_trip() {
        for s in ["500ms", "10s", "1m", "1h", "1m30s", "1h30m", "1s500ms"] {
            assert_eq!(parse_duration(s).map(|d| d.to_string()).as_deref(), Ok(s));
        }
        assert_eq!(
            parse_duration("90s").map(|d| d.to_string()).as_deref(),
            Ok("1m30s")
        );
        assert_eq!(format_seconds(1500), "25m");
        assert_eq!(format_seconds(0), "0s");
    }

    #[test]
    fn serde_as_string() {
        let d = HumanDuration::from_secs(90);
        assert_eq!(serde_json::to_string(&d).ok().as_deref(), Some("\"1m30s\""));
        let back: Result<HumanDuration, _> = serde_json::from_str("\"1m30s\"");
        assert_eq!(back.ok(), Some(d));
        assert!(serde_json::from_str::<HumanDuration>("\"0s\"").is_err());
    }
}
