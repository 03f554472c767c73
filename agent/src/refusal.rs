//! Every answer that is not the object: one typed refusal per reason, turned into a status code and a small JSON
//! body that a person and a program can both read. Never the token, a signature or a cookie.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use vd_token::Reason;

use crate::metrics::{Metrics, ReasonLabel};
use crate::server::Body;
use crate::storage::StorageError;

/// Why a request is not answered with the object.
#[derive(Debug)]
pub enum Refusal {
    MethodNotAllowed {
        allow: &'static str,
    },
    RateLimited {
        retry_after_secs: u64,
    },
    BadPath(vd_token::PathError),
    NoRoute,
    /// The token check failed: 401 for a missing token, 403 for every other reason.
    Token(Reason),
    NoKeyring,
    /// The keyring is starting (its Secret was made again): tokens verify, but nothing can be minted until its
    /// pending key becomes active.
    NoActiveKey,
    /// A session requested from a page on an origin that is not listed (spec §5.5).
    CrossSite,
    /// A DASH template needs a prefix token and a path token was presented (spec §5.6).
    PrefixRequired,
    BadHost,
    BadManifest(String),
    Storage(StorageError),
    RangeNotSatisfiable {
        size: u64,
    },
    /// `If-Match` or `If-Unmodified-Since` failed (RFC 9110 §13.1.1, §13.1.4).
    PreconditionFailed,
    /// An HTTP/1.1 request without exactly one `Host` (RFC 9112 §3.2).
    HostRequired,
    Busy,
}

impl From<StorageError> for Refusal {
    fn from(e: StorageError) -> Refusal {
        Refusal::Storage(e)
    }
}

impl Refusal {
    pub fn response(self, metrics: &Metrics) -> Response<Body> {
        match self {
            Refusal::MethodNotAllowed { allow } => {
                let msg = format!("this path answers {allow} only");
                let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", &msg);
                r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
                r
            }
            Refusal::RateLimited { retry_after_secs } => {
                let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests from this address");
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
                r
            }
            Refusal::BadPath(e) => error(StatusCode::BAD_REQUEST, "bad_path", &e.to_string()),
            Refusal::NoRoute => error(StatusCode::NOT_FOUND, "not_found", "no such route"),
            Refusal::Token(reason) => {
                metrics.rejections.get_or_create(&ReasonLabel { reason: reason.code() }).inc();
                let (status, word) = if reason == Reason::Missing {
                    (StatusCode::UNAUTHORIZED, "unauthorized")
                } else {
                    (StatusCode::FORBIDDEN, "forbidden")
                };
                let mut r = json(status, word, reason.code(), &reason.to_string());
                if reason == Reason::Missing {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                r
            }
            Refusal::NoKeyring => error(StatusCode::SERVICE_UNAVAILABLE, "no_keyring", "no keyring is loaded yet"),
            Refusal::NoActiveKey => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_active_key",
                "the keyring has no active key yet (it was made again); try again after its pending key activates",
            ),
            Refusal::CrossSite => {
                metrics.rejections.get_or_create(&ReasonLabel { reason: "cross_site" }).inc();
                let msg = "a session can be opened only from this origin or an origin listed in --cors-origin";
                json(StatusCode::FORBIDDEN, "forbidden", "cross_site", msg)
            }
            Refusal::PrefixRequired => {
                metrics.rejections.get_or_create(&ReasonLabel { reason: "prefix_required" }).inc();
                let msg = crate::manifest::PrefixRequired.to_string();
                json(StatusCode::FORBIDDEN, "forbidden", "prefix_required", &msg)
            }
            Refusal::BadHost => error(StatusCode::BAD_REQUEST, "bad_host", "the Host header is not a valid authority"),
            Refusal::BadManifest(why) => {
                tracing::warn!(error = %why, "manifest could not be rewritten");
                let msg = format!("the manifest could not be rewritten: {why}");
                error(StatusCode::BAD_GATEWAY, "bad_manifest", &msg)
            }
            Refusal::Storage(e) => storage_error(e),
            Refusal::RangeNotSatisfiable { size } => {
                let mut r = error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range_not_satisfiable",
                    "the range is outside the object",
                );
                set(r.headers_mut(), header::CONTENT_RANGE, &format!("bytes */{size}"));
                r.headers_mut().insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                r
            }
            Refusal::PreconditionFailed => error(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                "the object does not match the request's precondition",
            ),
            Refusal::HostRequired => {
                error(StatusCode::BAD_REQUEST, "bad_host", "an HTTP/1.1 request needs exactly one Host header")
            }
            Refusal::Busy => {
                let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "busy", "too many streams; try again shortly");
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                r
            }
        }
    }
}

fn storage_error(e: StorageError) -> Response<Body> {
    match e {
        StorageError::NotFound => error(StatusCode::NOT_FOUND, "not_found", "no such object"),
        StorageError::Timeout(_) => {
            error(StatusCode::GATEWAY_TIMEOUT, "storage_timeout", "storage did not answer in time")
        }
        StorageError::Busy => {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "busy", "too many streams; try again shortly");
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        StorageError::Stuck { .. } => {
            let msg = "storage has stopped answering and every storage thread is waiting on it; retry shortly";
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "storage_stuck", msg);
            // Stuck calls seldom clear within a second; readiness is failing, so balancers route elsewhere.
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
        StorageError::Changed => {
            error(StatusCode::SERVICE_UNAVAILABLE, "object_changed", "the object changed while it was read; retry")
        }
        StorageError::BadUrl(_) | StorageError::Unavailable(_) => {
            tracing::warn!(error = %e, "storage request failed");
            error(StatusCode::BAD_GATEWAY, "storage_unavailable", "storage could not be reached")
        }
    }
}

/// Sets a header from text, or leaves it out when the text cannot be a header value (a store's odd content type
/// or ETag): a missing header is honest, a made-up one is not.
pub fn set(headers: &mut http::HeaderMap, name: impl http::header::IntoHeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(_) => tracing::debug!(value, "not a valid header value; header left out"),
    }
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// The reason code of a refusal, carried on the response for the access log and the refusal metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused(pub &'static str);

fn error(status: StatusCode, code: &'static str, message: &str) -> Response<Body> {
    json(status, if status.is_server_error() { "unavailable" } else { "error" }, code, message)
}

fn json(status: StatusCode, error: &str, reason: &'static str, message: &str) -> Response<Body> {
    let mut r = json_value(status, &serde_json::json!({ "error": error, "reason": reason, "message": message }));
    r.extensions_mut().insert(Refused(reason));
    r
}

/// A small JSON answer that no cache keeps.
pub fn json_value(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = value.to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::set;

    #[test]
    fn a_value_that_cannot_be_a_header_is_left_out_not_made_up() {
        let mut h = HeaderMap::new();
        set(&mut h, "content-type", "video/mp4\r\nx-evil: 1");
        set(&mut h, "etag", "\"abc\"");
        assert!(h.get("content-type").is_none());
        assert_eq!(h.get("etag").unwrap(), "\"abc\"");
    }
}
