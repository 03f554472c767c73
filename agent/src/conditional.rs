//! Conditional requests (RFC 9110 §13): validators, `If-None-Match`, `If-Modified-Since` and `If-Range`.

use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderValue};

use crate::storage::Meta;

/// `If-Match` (strong comparison) or, without it, `If-Unmodified-Since`: `false` means 412 (RFC 9110 §13.1.1,
/// §13.1.4, evaluated first as §13.2.2 orders).
pub fn preconditions_hold(h: &HeaderMap, etag: Option<&str>, meta: &Meta) -> bool {
    if let Some(im) = h.get(header::IF_MATCH) {
        let Ok(im) = im.to_str() else { return false };
        return im
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || etag.is_some_and(|e| !e.starts_with("W/") && !t.starts_with("W/") && e == t));
    }
    if let Some(ius) =
        h.get(header::IF_UNMODIFIED_SINCE).and_then(|v| v.to_str().ok()).and_then(|v| httpdate::parse_http_date(v).ok())
    {
        return secs(meta.last_modified) <= secs(ius);
    }
    true
}

/// `If-None-Match` (weak comparison) or, without it, `If-Modified-Since` (RFC 9110 §13.1.2, §13.1.3).
pub fn not_modified(h: &HeaderMap, etag: Option<&str>, meta: &Meta) -> bool {
    if let Some(inm) = h.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let Some(etag) = etag else { return false };
        return inm.split(',').map(str::trim).any(|t| t == "*" || weak(t) == weak(etag));
    }
    if let Some(ims) =
        h.get(header::IF_MODIFIED_SINCE).and_then(|v| v.to_str().ok()).and_then(|v| httpdate::parse_http_date(v).ok())
    {
        return secs(meta.last_modified) <= secs(ims);
    }
    false
}

/// `If-Range`: the range applies only if the client's validator still matches (strong comparison, §13.1.5).
pub fn if_range_holds(h: &HeaderMap, etag: Option<&str>, meta: &Meta) -> bool {
    let Some(v) = h.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else { return true };
    let v = v.trim();
    if v.starts_with('"') || v.starts_with("W/") {
        return !v.starts_with("W/") && etag.is_some_and(|e| !e.starts_with("W/") && e == v);
    }
    httpdate::parse_http_date(v).is_ok_and(|d| secs(d) == secs(meta.last_modified))
}

fn weak(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// A storage ETag as an HTTP entity tag (quoted).
pub fn quote_etag(tag: &str) -> String {
    if tag.starts_with('"') || tag.starts_with("W/\"") { tag.to_owned() } else { format!("\"{tag}\"") }
}

pub fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn http_date(t: SystemTime) -> HeaderValue {
    HeaderValue::from_str(&httpdate::fmt_http_date(t)).expect("an HTTP date is a valid header value")
}

pub fn unix_now() -> u64 {
    secs(SystemTime::now())
}
