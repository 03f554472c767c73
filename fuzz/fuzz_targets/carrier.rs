//! The path carrier (`vd_token::split_path_carrier`) on arbitrary raw paths and route prefixes.
//!
//! Input: a control byte choosing the route prefix (one of a few, or, for values >= 8, the text up to the first
//! `\n`), then the raw path. Properties: never panics; `None` exactly when the path does not start with
//! `{prefix}/t/`; otherwise the returned path starts with the prefix and a `/`, the token has no `/`, and putting
//! `/t/{token}` back gives the raw path; once canonical, the path is still under a canonical route prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vd_token::split_path_carrier;

const PREFIXES: [&str; 8] = ["", "/", "/videos", "/videos/", "/a/b", "/t", "/videos/t", "/caf%C3%A9"];

fuzz_target!(|data: &[u8]| {
    let ([c], rest) = vd_fuzz::split_header::<1>(data);
    let text = vd_fuzz::text(rest);
    let (route, raw) = match PREFIXES.get(usize::from(c)) {
        Some(p) => (*p, &*text),
        None => text.split_once('\n').unwrap_or(("", &*text)),
    };
    let trimmed = route.trim_end_matches('/');
    let expected = raw.strip_prefix(trimmed).is_some_and(|r| r.starts_with("/t/"));
    let Some(carried) = split_path_carrier(raw, route) else {
        assert!(!expected, "{raw:?} under {route:?} has a path carrier that was not found");
        return;
    };
    assert!(expected, "a carrier found in {raw:?} under {route:?}");
    let path = carried.path.as_str();
    assert!(path.starts_with(trimmed) && path[trimmed.len()..].starts_with('/'), "{path:?} is not under {route:?}");
    assert!(!carried.token.contains('/'), "token {:?} holds a '/'", carried.token);
    let object = &path[trimmed.len() + 1..];
    let rebuilt = format!("{trimmed}/t/{}/{object}", carried.token);
    assert!(rebuilt == raw || (object.is_empty() && rebuilt[..rebuilt.len() - 1] == *raw), "{raw:?} -> {carried:?}");
    // What the agent does next: canonicalise. A canonical route prefix survives it.
    if !trimmed.contains('%')
        && (trimmed.is_empty() || vd_token::canonical_path(trimmed).is_ok())
        && let Ok(canonical) = vd_token::canonical_path(path)
    {
        assert!(
            canonical.starts_with(trimmed) && canonical[trimmed.len()..].starts_with('/'),
            "{raw:?}: canonical {canonical:?} left the route prefix {route:?}"
        );
    }
});
