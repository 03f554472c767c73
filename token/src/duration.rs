//! Signing durations as Go writes them ("168h", "2m", "1h30m", "90s"), in whole seconds.
//!
//! The CRD's CEL `duration()`, the operator and the agent's flags all read these strings. Before this module each
//! had its own parser and they disagreed (`1ms` passed one and became 0 s in another), so a value that reached an
//! agent could mean something other than what the API server checked. Sub-second units are refused: nothing in
//! the token format is finer than a second.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Longest accepted text; the CRD's `maxLength` for duration fields is the same.
pub const MAX_LEN: usize = 32;

/// The pattern the CRD puts on every duration field; [`parse`] accepts exactly the strings it matches.
pub const PATTERN: &str = "^([0-9]+(h|m|s))+$";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration like \"168h\", \"2m\", \"1h30m\" or \"90s\" (whole seconds; units h, m, s)")]
    Form(String),
    #[error("{0:?} is too long a duration")]
    Overflow(String),
}

/// A duration in whole seconds, shown in Go's canonical form ("1h30m", "0s").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(u64);

impl GoDuration {
    pub const fn from_secs(secs: u64) -> GoDuration {
        GoDuration(secs)
    }
    pub const fn as_secs(self) -> u64 {
        self.0
    }
    pub const fn to_std(self) -> Duration {
        Duration::from_secs(self.0)
    }
}

/// Parses `text` as the CRD's pattern allows: one or more `<digits><h|m|s>` parts, summed.
pub fn parse(text: &str) -> Result<GoDuration, DurationError> {
    let form = || DurationError::Form(text.chars().take(MAX_LEN + 8).collect());
    if text.is_empty() || text.len() > MAX_LEN {
        return Err(form());
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for b in text.bytes() {
        match b {
            b'0'..=b'9' => {
                let n = number.unwrap_or(0).checked_mul(10).and_then(|n| n.checked_add(u64::from(b - b'0')));
                number = Some(n.ok_or_else(|| DurationError::Overflow(text.into()))?);
            }
            b'h' | b'm' | b's' => {
                let n = number.take().ok_or_else(form)?;
                let unit = match b {
                    b'h' => 3600,
                    b'm' => 60,
                    _ => 1,
                };
                total = n
                    .checked_mul(unit)
                    .and_then(|s| total.checked_add(s))
                    .ok_or_else(|| DurationError::Overflow(text.into()))?;
            }
            _ => return Err(form()),
        }
    }
    if number.is_some() {
        // Trailing digits without a unit ("90").
        return Err(form());
    }
    Ok(GoDuration(total))
}

/// For clap's `value_parser`: the agent's signing flags take the same strings the CRD does.
pub fn parse_std(text: &str) -> Result<Duration, DurationError> {
    parse(text).map(GoDuration::to_std)
}

impl FromStr for GoDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (h, m, s) = (self.0 / 3600, self.0 / 60 % 60, self.0 % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 || self.0 == 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_forms_parse_to_whole_seconds() {
        for (text, secs) in [("168h", 604_800), ("2m", 120), ("1h30m", 5400), ("90s", 90), ("0s", 0), ("1h1h", 7200)] {
            assert_eq!(parse(text), Ok(GoDuration(secs)), "{text}");
        }
    }

    #[test]
    fn what_the_crd_pattern_refuses_is_refused() {
        for bad in ["", "1ms", "1.5h", "7d", "h", "-1s", "1 h", "90", "1H", "1µs", "s1", "1h 30m", &"1s".repeat(17)] {
            assert!(matches!(parse(bad), Err(DurationError::Form(_))), "{bad:?}");
        }
        assert!(matches!(parse("99999999999999999999s"), Err(DurationError::Overflow(_))));
        assert!(matches!(parse("9999999999999999h"), Err(DurationError::Overflow(_))));
    }

    #[test]
    fn display_is_canonical_and_parses_back() {
        for (secs, text) in [(0, "0s"), (90, "1m30s"), (3600, "1h"), (5401, "1h30m1s"), (604_800, "168h")] {
            assert_eq!(GoDuration(secs).to_string(), text);
            assert_eq!(parse(text), Ok(GoDuration(secs)));
        }
    }
}
