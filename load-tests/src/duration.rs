//! Human durations on the command line: `10s`, `500ms`, `2m`, `1m30s`, `1.5s`.

use std::fmt;
use std::time::Duration;

/// Why a duration does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration '{input}': {reason} (examples: 10s, 500ms, 2m, 1m30s)")]
pub struct ParseDurationError {
    input: String,
    reason: &'static str,
}

/// Units, longest suffix first so that `ms` is not read as `m`.
const UNITS: &[(&str, f64)] = &[
    ("ns", 1e-9),
    ("us", 1e-6),
    ("µs", 1e-6),
    ("ms", 1e-3),
    ("s", 1.0),
    ("m", 60.0),
    ("h", 3600.0),
];

/// Parses a duration written as one or more `<number><unit>` parts, with units `ns`, `us`
/// (or `µs`), `ms`, `s`, `m` and `h`; the number may have a fraction (`1.5s`). Parts add up:
/// `1m30s` is 90 seconds. A bare number is refused, since its unit would be a guess.
pub fn parse_duration(input: &str) -> Result<Duration, ParseDurationError> {
    let error = |reason| ParseDurationError {
        input: input.to_owned(),
        reason,
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(error("empty"));
    }
    let mut rest = text;
    let mut seconds = 0.0_f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| error("missing unit"))?;
        if digits == 0 {
            return Err(error("expected a number"));
        }
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| error("malformed number"))?;
        rest = &rest[digits..];
        let (suffix, scale) = UNITS
            .iter()
            .filter(|(suffix, _)| rest.starts_with(suffix))
            .max_by_key(|(suffix, _)| suffix.len())
            .ok_or_else(|| error("unknown unit"))?;
        rest = &rest[suffix.len()..];
        seconds += number * scale;
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| error("out of range"))
}

/// Displays a duration the way [`parse_duration`] reads it: `10s`, `500ms`, `1m30s`, `1.5s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        if d.subsec_nanos() == 0 {
            let total = d.as_secs();
            let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
            if h > 0 {
                write!(f, "{h}h")?;
            }
            if m > 0 {
                write!(f, "{m}m")?;
            }
            if s > 0 {
                write!(f, "{s}s")?;
            }
            return Ok(());
        }
        if d >= Duration::from_secs(1) {
            return write!(f, "{}s", d.as_secs_f64());
        }
        let nanos = d.subsec_nanos();
        if nanos.is_multiple_of(1_000_000) {
            write!(f, "{}ms", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            write!(f, "{}us", nanos / 1_000)
        } else {
            write!(f, "{nanos}ns")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Duration {
        parse_duration(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn parses_each_unit() {
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("250µs"), Duration::from_micros(250));
        assert_eq!(ok("750ns"), Duration::from_nanos(750));
        assert_eq!(ok("0s"), Duration::ZERO);
    }

    #[test]
    fn adds_parts_and_reads_fractions() {
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1h2m3s"), Duration::from_secs(3723));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("0.25m"), Duration::from_secs(15));
        assert_eq!(ok(" 2m "), Duration::from_secs(120));
    }

    #[test]
    fn refuses_malformed_input() {
        for bad in ["", "10", "s", "10x", "-1s", "1.5.5s", "10 s", "ms10", "1s2"] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.to_string().contains("invalid duration"), "{err}");
        }
        assert_eq!(
            parse_duration("10").expect_err("bare number").reason,
            "missing unit"
        );
        assert_eq!(
            parse_duration("10x").expect_err("bad unit").reason,
            "unknown unit"
        );
    }

    #[test]
    fn display_reads_back() {
        for text in ["10s", "500ms", "2m", "1m30s", "1h", "1.5s", "250us", "0s"] {
            let d = ok(text);
            let shown = HumanDuration(d).to_string();
            assert_eq!(shown, text);
            assert_eq!(ok(&shown), d);
        }
    }
}
