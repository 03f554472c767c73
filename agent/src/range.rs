//! `Range` requests (RFC 9110 §14), reduced to what a video origin answers.

use std::ops::Range;

/// How to answer a request, given its `Range` header and the representation's length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// 200 with the whole representation.
    Full,
    /// 206 with one byte range (half-open).
    Partial(Range<u64>),
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Decides the answer for a `Range` header value.
///
/// A header we do not understand (another unit, bad syntax) is ignored, as RFC 9110 §14.2 requires, and the whole
/// representation is sent. A request for several ranges is answered with the whole representation too (§14.2 lets
/// a server ignore `Range`): players never ask for several ranges, and multipart answers are an amplification
/// vector for little benefit. A single range of several satisfiable ones is not guessed at.
pub fn plan(header: Option<&str>, len: u64) -> Plan {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Plan::Full;
    };
    let mut parts = spec.split(',').map(str::trim).filter(|s| !s.is_empty());
    match (parts.next(), parts.next()) {
        (None, _) => Plan::Full,
        (Some(one), None) => match parse_one(one, len) {
            Parsed::Satisfiable(r) => Plan::Partial(r),
            Parsed::Unsatisfiable => Plan::Unsatisfiable,
            Parsed::Invalid => Plan::Full,
        },
        _ => plan_many(spec, len),
    }
}

/// Several ranges: 416 when none is satisfiable (§15.5.17), else the whole representation.
fn plan_many(spec: &str, len: u64) -> Plan {
    let mut any = false;
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match parse_one(part, len) {
            Parsed::Invalid => return Plan::Full,
            Parsed::Satisfiable(_) => any = true,
            Parsed::Unsatisfiable => {}
        }
    }
    if any { Plan::Full } else { Plan::Unsatisfiable }
}

enum Parsed {
    Satisfiable(Range<u64>),
    Unsatisfiable,
    Invalid,
}

fn parse_one(s: &str, len: u64) -> Parsed {
    let Some((first, last)) = s.split_once('-') else {
        return Parsed::Invalid;
    };
    let num = |t: &str| -> Option<u64> {
        if t.is_empty() || t.len() > 19 || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    if first.is_empty() {
        // Suffix: the last N bytes.
        return match num(last) {
            None => Parsed::Invalid,
            Some(0) => Parsed::Unsatisfiable,
            Some(_) if len == 0 => Parsed::Unsatisfiable,
            Some(n) => Parsed::Satisfiable(len.saturating_sub(n)..len),
        };
    }
    let Some(start) = num(first) else {
        return Parsed::Invalid;
    };
    let end = if last.is_empty() {
        None
    } else {
        match num(last) {
            Some(e) if e >= start => Some(e),
            _ => return Parsed::Invalid,
        }
    };
    if start >= len {
        return Parsed::Unsatisfiable;
    }
    let end = end.map_or(len, |e| e.saturating_add(1).min(len));
    Parsed::Satisfiable(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let p = |h: &str| plan(Some(h), 1000);
        assert_eq!(p("bytes=0-99"), Plan::Partial(0..100));
        assert_eq!(p("bytes=0-0"), Plan::Partial(0..1));
        assert_eq!(p("bytes=0-1"), Plan::Partial(0..2), "the Safari probe");
        assert_eq!(p("bytes=990-2000"), Plan::Partial(990..1000), "end clamped");
        assert_eq!(p("bytes=500-"), Plan::Partial(500..1000));
        assert_eq!(p("bytes=-100"), Plan::Partial(900..1000));
        assert_eq!(p("bytes=-5000"), Plan::Partial(0..1000), "suffix longer than the file");
        assert_eq!(p("bytes=1000-"), Plan::Unsatisfiable);
        assert_eq!(p("bytes=-0"), Plan::Unsatisfiable);
        assert_eq!(p("bytes=0-1,5-9"), Plan::Full, "several ranges: whole representation");
        assert_eq!(p("bytes=2000-,3000-"), Plan::Unsatisfiable, "several, none satisfiable");
        assert_eq!(p(" bytes=1-2 "), Plan::Partial(1..3));
    }

    #[test]
    fn nonsense_is_ignored_not_an_error() {
        for h in
            ["items=0-1", "bytes=", "bytes=a-b", "bytes=5-1", "bytes=--1", "bytes=1", "bytes=99999999999999999999-"]
        {
            assert_eq!(plan(Some(h), 1000), Plan::Full, "{h}");
        }
        assert_eq!(plan(None, 1000), Plan::Full);
    }

    #[test]
    fn empty_objects() {
        assert_eq!(plan(Some("bytes=0-"), 0), Plan::Unsatisfiable);
        assert_eq!(plan(Some("bytes=-1"), 0), Plan::Unsatisfiable);
        assert_eq!(plan(None, 0), Plan::Full);
    }
}
