//! Canonical paths (`vd_token::canonical_path`, `canonical_prefix`) on arbitrary raw request paths.
//!
//! Input: the raw (percent-encoded) path. Properties: never panics; an accepted path is canonical (leading `/`, no
//! empty, `.` or `..` segment, within `MAX_PATH_LEN`; a prefix ends in `/`); encoding it with
//! `vd_token::encode_path` and canonicalising again gives it back (one spelling per object); the encoding uses only
//! unreserved bytes, `/` and `%XX`; a raw path without `%` is its own canonical form; a path and the same path with
//! a `/` appended are accepted together, as a path and as a prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vd_token::{MAX_PATH_LEN, PathKind, canonical_path, canonical_prefix, check_canonical, encode_path};

fn check(raw: &str, kind: PathKind) -> Option<String> {
    let result = match kind {
        PathKind::Path => canonical_path(raw),
        PathKind::Prefix => canonical_prefix(raw),
    };
    let c = result.ok()?.into_owned();
    assert!(c.starts_with('/') && c.len() <= MAX_PATH_LEN, "{kind:?} {raw:?} -> {c:?}");
    assert_eq!(check_canonical(&c, kind), Ok(()), "{kind:?} {raw:?} -> {c:?} is not canonical");
    let body = match kind {
        PathKind::Path => &c[1..],
        PathKind::Prefix if c == "/" => "",
        PathKind::Prefix => c[1..].strip_suffix('/').unwrap_or_else(|| panic!("prefix {c:?} without a final '/'")),
    };
    if !body.is_empty() || kind == PathKind::Path {
        for seg in body.split('/') {
            assert!(!matches!(seg, "" | "." | ".."), "{kind:?} {raw:?} -> {c:?} has segment {seg:?}");
        }
    }
    if !raw.contains('%') {
        assert_eq!(c, raw, "{kind:?}: nothing to decode, yet the path changed");
    }
    let encoded = encode_path(&c).to_string();
    let b = encoded.as_bytes();
    for (i, &ch) in b.iter().enumerate() {
        let ok = ch.is_ascii_alphanumeric()
            || b"-._~/".contains(&ch)
            || (ch == b'%' && b.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)));
        assert!(ok, "encode_path({c:?}) = {encoded:?} has a raw {:?}", ch as char);
    }
    let again = match kind {
        PathKind::Path => canonical_path(&encoded),
        PathKind::Prefix => canonical_prefix(&encoded),
    };
    assert_eq!(again.as_deref(), Ok(c.as_str()), "{kind:?} {raw:?} -> {c:?} -> {encoded:?} is not idempotent");
    Some(c)
}

fuzz_target!(|data: &[u8]| {
    let raw = vd_fuzz::text(data);
    let path = check(&raw, PathKind::Path);
    let prefix = check(&raw, PathKind::Prefix);
    if let Some(p) = &path {
        assert!(prefix.is_none(), "{raw:?} accepted both as a path and as a prefix");
        let slashed = format!("{raw}/");
        if p.len() < MAX_PATH_LEN {
            assert_eq!(check(&slashed, PathKind::Prefix), Some(format!("{p}/")), "{raw:?} + '/' as a prefix");
        }
    }
    if let Some(p) = &prefix
        && p != "/"
        && raw.ends_with('/')
    {
        let trimmed = &raw[..raw.len() - 1];
        assert_eq!(check(trimmed, PathKind::Path).as_deref(), Some(&p[..p.len() - 1]), "{raw:?} without its '/'");
    }
});
