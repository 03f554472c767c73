//! Cross-origin reads for players on another origin, and the same-site check a session exchange needs.

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use crate::config::Config;
use crate::refusal::empty;
use crate::server::Body;

/// The request's Origin if it may read answers, and whether it may do so with credentials (cookies): only an
/// origin listed by name, never one let in by `*` (spec §5.5).
fn origin_allowed<'a>(config: &Config, headers: &'a HeaderMap) -> Option<(&'a HeaderValue, bool)> {
    let origin = headers.get(header::ORIGIN)?;
    let o = origin.to_str().ok()?;
    let named = config.cors_origins.iter().any(|a| a == o);
    (named || config.cors_origins.iter().any(|a| a == "*")).then_some((origin, named))
}

/// What players and scripts on another origin read besides the safelisted headers.
const EXPOSED: &str = "Content-Range, Content-Length, Accept-Ranges, ETag, X-Cache, Retry-After";

/// CORS headers on every answer to an allowed origin, so players on another origin can read ranges. With CORS on,
/// answers differ by Origin, so they say so; with it off they do not.
pub fn headers(config: &Config, req: &HeaderMap, resp: &mut HeaderMap) {
    if config.cors_origins.is_empty() {
        return;
    }
    resp.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some((origin, credentials)) = origin_allowed(config, req) {
        resp.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if credentials {
            resp.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        resp.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSED));
    }
    // Resource Timing on the listed origins' pages (protocol, connection and byte counts, what player analytics
    // measure) is empty for our answers without it. On every answer, not only to an `Origin`: a `<video src>` load
    // sends none. A list is allowed here, unlike in Access-Control-Allow-Origin.
    if let Ok(v) = HeaderValue::from_str(&config.cors_origins.join(", ")) {
        resp.insert(HeaderName::from_static("timing-allow-origin"), v);
    }
}

pub fn preflight(config: &Config, req: &HeaderMap) -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    if origin_allowed(config, req).is_some() {
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, HEAD, POST, OPTIONS"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Range, Authorization, If-Range, If-None-Match, If-Modified-Since"),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    }
    r
}

/// Whether a state-changing request (a session exchange) comes from a page the agent may serve credentials to:
/// its own origin, or one listed by name. Without `Origin` a browser still says `Sec-Fetch-Site`; a request with
/// neither is not from a browser page (curl, a backend) and is let through.
pub fn may_mint_credentials(config: &Config, req: &HeaderMap, host: Option<&str>) -> bool {
    if let Some(origin) = req.get(header::ORIGIN) {
        let Ok(o) = origin.to_str() else { return false };
        if config.cors_origins.iter().any(|a| a == o) {
            return true;
        }
        // Same origin: the Origin's authority is the Host the request was sent to.
        let authority = o.strip_prefix("https://").or_else(|| o.strip_prefix("http://"));
        return authority.is_some_and(|a| host.is_some_and(|h| h.eq_ignore_ascii_case(a)));
    }
    let site = req.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    !matches!(site, Some(s) if s.eq_ignore_ascii_case("cross-site"))
}
