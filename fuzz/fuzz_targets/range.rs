//! The agent's `Range` header planner (`videodelivery_agent::range::plan`) on arbitrary headers and sizes.
//!
//! Input: a control byte (bit 0: no header at all; bits 1-2: the size is 0, the next byte, `u64::MAX`, or the next
//! 8 bytes), then the header value. Properties: never panics; a `Partial` range is non-empty and lies within
//! `0..size`; an empty object is never answered `Partial`; no header means `Full`; surrounding whitespace and a
//! trailing `,` never change the answer; the single-range forms built from the size give their documented answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use videodelivery_agent::range::{Plan, plan};

fn check(header: Option<&str>, size: u64) -> Plan {
    let p = plan(header, size);
    if let Plan::Partial(r) = &p {
        assert!(r.start < r.end && r.end <= size, "{header:?} on {size} bytes -> {r:?}");
    }
    if header.is_none() {
        assert_eq!(p, Plan::Full);
    }
    p
}

fuzz_target!(|data: &[u8]| {
    let (h, rest) = vd_fuzz::split_header::<9>(data);
    let size = match (h[0] >> 1) & 3 {
        0 => 0,
        1 => u64::from(h[1]),
        2 => u64::MAX,
        _ => u64::from_le_bytes(h[1..9].try_into().expect("8 bytes")),
    };
    let text = vd_fuzz::text(rest);
    let header = (h[0] & 1 == 0).then_some(&*text);
    let p = check(header, size);
    if let Some(hv) = header {
        assert_eq!(check(Some(&format!(" \t{hv} ")), size), p, "whitespace around {hv:?}");
        if hv.trim().starts_with("bytes=") {
            assert_eq!(check(Some(&format!("{hv},")), size), p, "a trailing ',' after {hv:?}");
            assert_eq!(check(Some(&format!("{hv}, ")), size), p, "a trailing ', ' after {hv:?}");
        }
    }
    // Documented single-range answers, for numbers taken from the input.
    let a = u64::from(h[1]) % (size.saturating_add(2).max(1));
    let b = a.saturating_add(u64::from(h[2]));
    let partial_or_416 = |start: u64, end: u64| {
        if start < size { Plan::Partial(start..end.min(size)) } else { Plan::Unsatisfiable }
    };
    assert_eq!(check(Some(&format!("bytes={a}-{b}")), size), partial_or_416(a, b.saturating_add(1)));
    assert_eq!(check(Some(&format!("bytes={a}-")), size), partial_or_416(a, size));
    let suffix = if a == 0 || size == 0 { Plan::Unsatisfiable } else { Plan::Partial(size.saturating_sub(a)..size) };
    assert_eq!(check(Some(&format!("bytes=-{a}")), size), suffix);
    if size > 0 {
        assert_eq!(check(Some("bytes=0-"), size), Plan::Partial(0..size));
    }
});
