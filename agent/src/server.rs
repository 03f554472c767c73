//! The video service: one plain `async fn` per request, no framework.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::Stream;
use futures::{StreamExt, TryStreamExt};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use vd_token::{Claims, Reason, RequestAuth, Scope, canonical_path};

use crate::auth::Auth;
use crate::cache::SliceCache;
use crate::config::Config;
use crate::manifest;
use crate::metadata::MetaCache;
use crate::metrics::{Metrics, ReasonLabel, StatusLabel};
use crate::range::{self, Plan};
use crate::storage::{Meta, Storage, StorageError};

pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Everything a request needs, shared by all connections.
pub struct State {
    pub config: Config,
    pub storage: Storage,
    pub cache: SliceCache,
    pub meta: MetaCache,
    pub auth: Arc<Auth>,
    pub metrics: Arc<Metrics>,
    pub limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    pub streams: Arc<Semaphore>,
    route_prefix: String,
}

impl State {
    pub fn new(config: Config, storage: Storage, auth: Arc<Auth>, metrics: Arc<Metrics>) -> State {
        let limiter = NonZeroU32::new(config.rate_limit).map(|rate| {
            let burst = NonZeroU32::new(config.rate_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let route_prefix = config.route_prefix.trim_end_matches('/').to_owned();
        let streams = Arc::new(Semaphore::new(config.max_streams));
        let cache = SliceCache::new(config.cache_size_mib << 20, config.slice_size_kib << 10, metrics.clone());
        let meta = MetaCache::new(config.metadata_ttl);
        State { config, storage, cache, meta, auth, metrics, limiter, streams, route_prefix }
    }
}

/// Answers one request. Never fails: every problem becomes a status code and a short JSON body.
pub async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let mut resp = route(&state, peer, &req).await.unwrap_or_else(|e| e);
    cors(&state.config, req.headers(), resp.headers_mut());
    state.metrics.requests.get_or_create(&StatusLabel { status: resp.status().as_u16() }).inc();
    state.metrics.ttfb.observe(started.elapsed().as_secs_f64());
    if req.method() == Method::HEAD {
        *resp.body_mut() = empty();
    }
    Ok(resp)
}

type Answer = Result<Response<Body>, Response<Body>>;

async fn route(state: &State, peer: SocketAddr, req: &Request<hyper::body::Incoming>) -> Answer {
    let method = req.method();
    if method == Method::OPTIONS {
        return Ok(preflight(&state.config, req.headers()));
    }
    let raw_path = req.uri().path();
    let carried = vd_token::split_path_carrier(raw_path, &state.route_prefix);
    let is_session = carried.is_none() && raw_path.strip_prefix(state.route_prefix.as_str()) == Some("/session");
    let allowed = method == Method::GET || method == Method::HEAD || (is_session && method == Method::POST);
    if !allowed {
        let mut r =
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "only GET, HEAD and OPTIONS are served");
        let allow = if is_session { "GET, POST, OPTIONS" } else { "GET, HEAD, OPTIONS" };
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        return Err(r);
    }
    let client = client_ip(&state.config.trusted_proxies, peer.ip(), req.headers());
    if let Some(limiter) = &state.limiter
        && let Err(not_until) = limiter.check_key(&client)
    {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
        let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests from this address");
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return Err(r);
    }
    if is_session {
        return session(state, req, client);
    }

    // With the path carrier, the token comes out of the path before anything else looks at it (spec §5.4).
    let raw_path = carried.as_ref().map_or(raw_path, |c| c.path.as_str());
    let path = canonical_path(raw_path).map_err(|e| error(StatusCode::BAD_REQUEST, "bad_path", &e.to_string()))?;
    let object = path
        .strip_prefix(state.route_prefix.as_str())
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|rest| !rest.is_empty())
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "not_found", "no such route"))?;

    // A manifest fetched through the path carrier needs no rewrite: its relative URIs inherit the token.
    let manifest = manifest::Kind::of(object).filter(|_| state.config.rewrite_manifests && carried.is_none());
    let mut claims = None;
    if !state.config.public_prefixes.iter().any(|p| path.starts_with(p.as_str())) {
        let auth = Authorize { path: &path, path_token: carried.as_ref().map(|c| c.token), client };
        claims = authorize(state, req, &auth, manifest.is_some())?;
    }
    let rewrite = manifest.zip(claims.as_ref());

    // Metadata may be remembered (--metadata-ttl). A storage read that finds another ETag starts the answer over,
    // once, with fresh metadata, so a replaced object is served whole and new, never spliced.
    let answer = || async {
        match rewrite {
            Some((kind, claims)) => serve_manifest(state, req, object, raw_path, kind, claims).await,
            None => serve(state, req, object).await,
        }
    };
    match answer().await {
        Ok(r) => Ok(r),
        Err(Failure::Answer(r)) => Err(r),
        Err(Failure::Changed) => {
            state.meta.invalidate(object).await;
            match answer().await {
                Ok(r) => Ok(r),
                Err(Failure::Answer(r)) => Err(r),
                Err(Failure::Changed) => Err(storage_error(StorageError::Changed)),
            }
        }
    }
}

/// Why [`serve`] did not produce a response.
enum Failure {
    Answer(Response<Body>),
    /// Storage holds another version than the metadata said.
    Changed,
}

impl From<Response<Body>> for Failure {
    fn from(r: Response<Body>) -> Failure {
        Failure::Answer(r)
    }
}

impl From<StorageError> for Failure {
    fn from(e: StorageError) -> Failure {
        match e {
            StorageError::Changed => Failure::Changed,
            e => Failure::Answer(storage_error(e)),
        }
    }
}

/// The object, a range of it, or a 304 or 416, once the request is authorized.
async fn serve(state: &State, req: &Request<hyper::body::Incoming>, object: &str) -> Result<Response<Body>, Failure> {
    let method = req.method();
    let meta = state.meta.get(&state.storage, object, &state.metrics).await.map_err(storage_error)?;
    let etag = meta.etag.as_deref().map(quote_etag);
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(tag) = &etag
        && let Ok(v) = HeaderValue::from_str(tag)
    {
        headers.insert(header::ETAG, v);
    }
    headers.insert(header::LAST_MODIFIED, http_date(meta.last_modified));
    if let Ok(v) = HeaderValue::from_str(&state.config.cache_control) {
        headers.insert(header::CACHE_CONTROL, v);
    }

    if not_modified(req.headers(), etag.as_deref(), &meta) {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        *r.headers_mut() = headers;
        return Ok(r);
    }

    let range_header = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok());
    let range_header = range_header.filter(|_| if_range_holds(req.headers(), etag.as_deref(), &meta));
    let (status, range) = match range::plan(range_header, meta.size) {
        Plan::Full => (StatusCode::OK, 0..meta.size),
        Plan::Partial(r) => (StatusCode::PARTIAL_CONTENT, r),
        Plan::Unsatisfiable => {
            let mut r =
                error(StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable", "the range is outside the object");
            r.headers_mut().insert(header::CONTENT_RANGE, hv(&format!("bytes */{}", meta.size)));
            r.headers_mut().insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            return Err(r.into());
        }
    };
    if status == StatusCode::PARTIAL_CONTENT {
        headers.insert(header::CONTENT_RANGE, hv(&format!("bytes {}-{}/{}", range.start, range.end - 1, meta.size)));
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(range.end - range.start));

    let mut content_type = None;
    let body = if method == Method::HEAD || range.is_empty() {
        empty()
    } else {
        let permit = stream_permit(state)?;
        let (opened, cached) =
            state.cache.read(&state.storage, object, meta.etag.as_deref(), meta.size, range.clone()).await?;
        headers.insert("x-cache", HeaderValue::from_static(cached.as_str()));
        content_type = opened.content_type;
        let stream = Metered {
            inner: opened.stream,
            metrics: state.metrics.clone(),
            _permit: Guard::new(permit, state.metrics.clone()),
        };
        BodyExt::boxed_unsync(StreamBody::new(stream))
    };
    let ct = content_type.as_deref().unwrap_or_else(|| content_type_for(object));
    headers.insert(header::CONTENT_TYPE, hv(ct));
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    Ok(r)
}

/// A slot among the streams the agent serves at once, or 503 with Retry-After.
#[expect(clippy::result_large_err)]
fn stream_permit(state: &State) -> Result<OwnedSemaphorePermit, Response<Body>> {
    state.streams.clone().try_acquire_owned().map_err(|_| {
        let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "busy", "too many streams; try again shortly");
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        r
    })
}

/// What a request presents for verification.
struct Authorize<'a> {
    path: &'a str,
    path_token: Option<&'a str>,
    client: IpAddr,
}

/// Checks the request's token; with `want_claims`, returns its claims for tokens derived from it.
// The refusal is the response itself; boxing it would only add an allocation per refused request.
#[expect(clippy::result_large_err)]
fn authorize(
    state: &State,
    req: &Request<hyper::body::Incoming>,
    a: &Authorize<'_>,
    want_claims: bool,
) -> Result<Option<Claims>, Response<Body>> {
    let verifier = state.auth.verifier().ok_or_else(no_keyring)?;
    let cookies = cookies(req);
    let auth = request_auth(req, a, &cookies);
    let verdict = if want_claims {
        verifier.verify_claims(&auth, unix_now()).map(Some)
    } else {
        verifier.verify(&auth, unix_now()).map(|_| None)
    };
    verdict.map_err(|reason| refusal(state, reason))
}

/// Each `Cookie` header's text (HTTP/2 may split cookies over several).
fn cookies(req: &Request<hyper::body::Incoming>) -> Vec<&str> {
    req.headers().get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).collect()
}

/// What the verifier looks at in a request.
fn request_auth<'a>(
    req: &'a Request<hyper::body::Incoming>,
    a: &Authorize<'a>,
    cookies: &'a [&'a str],
) -> RequestAuth<'a> {
    RequestAuth {
        path: a.path,
        query: req.uri().query(),
        authorization: req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()),
        cookies,
        client_ip: Some(a.client),
        path_token: a.path_token,
    }
}

fn no_keyring() -> Response<Body> {
    error(StatusCode::SERVICE_UNAVAILABLE, "no_keyring", "no keyring is loaded yet")
}

/// 401 for a missing token, 403 for every other reason, with the reason's code; never the token itself.
fn refusal(state: &State, reason: Reason) -> Response<Body> {
    state.metrics.rejections.get_or_create(&ReasonLabel { reason: reason.code() }).inc();
    let status = if reason == Reason::Missing { StatusCode::UNAUTHORIZED } else { StatusCode::FORBIDDEN };
    let word = if reason == Reason::Missing { "unauthorized" } else { "forbidden" };
    let mut r = json(status, word, reason.code(), &reason.to_string());
    if reason == Reason::Missing {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// `{route-prefix}/session` (spec §5.5): trades a valid prefix token for a cookie scoped to its prefix that lives
/// for the configured session lifetime, so a long viewing never meets an expired token.
#[expect(clippy::result_large_err)]
fn session(state: &State, req: &Request<hyper::body::Incoming>, client: IpAddr) -> Answer {
    let (Some(verifier), Some(signer)) = (state.auth.verifier(), state.auth.signer()) else {
        return Err(no_keyring());
    };
    let cookies = cookies(req);
    let auth = request_auth(req, &Authorize { path: req.uri().path(), path_token: None, client }, &cookies);
    let now = unix_now();
    let presented = verifier.verify_session(&auth, now).map_err(|reason| refusal(state, reason))?;
    let Scope::Prefix(prefix) = presented.scope else {
        return Err(refusal(state, Reason::WrongScope));
    };
    let ttl = state.config.session_ttl.as_secs();
    let claims = Claims {
        kid: signer.kid().to_owned(),
        exp: now + ttl,
        nbf: None,
        scope: Scope::Prefix(prefix.clone()),
        ip: presented.ip,
    };
    let cfg = &state.config;
    let cookie = format!(
        "{}={}; Path={}; Max-Age={ttl}; HttpOnly{}; SameSite={}",
        vd_token::COOKIE_NAME,
        signer.token(&claims),
        vd_token::encode_path(&prefix),
        if cfg.session_cookie_insecure { "" } else { "; Secure" },
        cfg.session_cookie_same_site.as_str(),
    );
    let mut r = json_value(StatusCode::OK, &serde_json::json!({ "prefix": prefix, "expires": claims.exp }));
    r.headers_mut().insert(header::SET_COOKIE, hv(&cookie));
    Ok(r)
}

/// A rewritten HLS playlist or DASH manifest (spec §5.6). Its bytes depend on the token, so it gets its own ETag,
/// ignores Range (RFC 9110 §14.2 lets a server send the whole representation) and carries a Content-Length only
/// when the rewrite fits in the first 64 KiB; longer ones stream.
async fn serve_manifest(
    state: &State,
    req: &Request<hyper::body::Incoming>,
    object: &str,
    raw_path: &str,
    kind: manifest::Kind,
    presented: &Claims,
) -> Result<Response<Body>, Failure> {
    let signer = state.auth.signer().ok_or_else(no_keyring)?;
    // Scope: the presented prefix, or the manifest's folder for a token that named the manifest alone.
    let scope = match &presented.scope {
        Scope::Prefix(p) => p.clone(),
        Scope::Path(p) => p[..=p.rfind('/').unwrap_or(0)].to_owned(),
    };
    let claims = Claims {
        kid: signer.kid().to_owned(),
        exp: presented.exp,
        nbf: None,
        scope: Scope::Prefix(scope.clone()),
        ip: presented.ip,
    };
    let token = signer.token(&claims);
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST).and_then(|v| v.to_str().ok()))
        .unwrap_or("localhost");
    let Some(rewriter) = manifest::Rewriter::new(host, raw_path, &scope, &token) else {
        return Err(error(StatusCode::BAD_REQUEST, "bad_host", "the Host header is not a valid authority").into());
    };

    let meta = state.meta.get(&state.storage, object, &state.metrics).await.map_err(storage_error)?;
    let etag = meta.etag.as_deref().map(|tag| {
        let digest = Sha256::digest(token.as_bytes());
        let short = u64::from_be_bytes(digest[..8].try_into().expect("SHA-256 has 32 bytes"));
        format!("\"{}-vd{short:016x}\"", tag.trim_start_matches("W/").trim_matches('"'))
    });
    let mut headers = HeaderMap::new();
    if let Some(tag) = &etag {
        headers.insert(header::ETAG, hv(tag));
    }
    headers.insert(header::LAST_MODIFIED, http_date(meta.last_modified));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("none"));
    headers.insert(header::CONTENT_TYPE, hv(content_type_for(object)));
    if not_modified(req.headers(), etag.as_deref(), &meta) {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        *r.headers_mut() = headers;
        return Ok(r);
    }
    let mut resp = Response::new(empty());
    // HEAD runs the rewrite too (its body is dropped in `handle`), so it reports the same Content-Length as GET.
    if meta.size == 0 {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        *resp.headers_mut() = headers;
        return Ok(resp);
    }
    let permit = stream_permit(state)?;
    let (opened, _) = state.cache.read(&state.storage, object, meta.etag.as_deref(), meta.size, 0..meta.size).await?;
    let source = opened.stream.map_err(std::io::Error::other).boxed();
    let mut rewritten = Box::pin(manifest::rewrite(kind, rewriter, source));
    let mut head = bytes::BytesMut::new();
    let mut complete = false;
    while head.len() < 64 * 1024 {
        match rewritten.next().await {
            Some(Ok(chunk)) => head.extend_from_slice(&chunk),
            Some(Err(e)) => {
                tracing::warn!(error = %e, object, "manifest could not be rewritten");
                let msg = format!("the manifest could not be rewritten: {e}");
                return Err(error(StatusCode::BAD_GATEWAY, "bad_manifest", &msg).into());
            }
            None => {
                complete = true;
                break;
            }
        }
    }
    let head = head.freeze();
    let stream: futures::stream::BoxStream<'static, Result<Bytes, StorageError>> = if complete {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(head.len() as u64));
        futures::stream::once(async move { Ok(head) }).boxed()
    } else {
        let rest = rewritten.map_err(|e| StorageError::Unavailable(e.to_string()));
        futures::stream::once(async move { Ok(head) }).chain(rest).boxed()
    };
    let body =
        Metered { inner: stream, metrics: state.metrics.clone(), _permit: Guard::new(permit, state.metrics.clone()) };
    *resp.body_mut() = BodyExt::boxed_unsync(StreamBody::new(body));
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// The client's address: the peer's, or the last untrusted hop of X-Forwarded-For when the peer is a trusted proxy.
pub fn client_ip(trusted: &[IpNet], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','));
    let hops: Vec<IpAddr> = hops.filter_map(|h| h.trim().parse().ok()).collect();
    hops.into_iter().rev().find(|ip| !is_trusted(ip)).unwrap_or(peer)
}

fn storage_error(e: StorageError) -> Response<Body> {
    match e {
        StorageError::NotFound => error(StatusCode::NOT_FOUND, "not_found", "no such object"),
        StorageError::Timeout(_) => {
            error(StatusCode::GATEWAY_TIMEOUT, "storage_timeout", "storage did not answer in time")
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

/// `If-None-Match` (weak comparison) or, without it, `If-Modified-Since` (RFC 9110 §13.1.2, §13.1.3).
fn not_modified(h: &HeaderMap, etag: Option<&str>, meta: &Meta) -> bool {
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
fn if_range_holds(h: &HeaderMap, etag: Option<&str>, meta: &Meta) -> bool {
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

fn quote_etag(tag: &str) -> String {
    if tag.starts_with('"') || tag.starts_with("W/\"") { tag.to_owned() } else { format!("\"{tag}\"") }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn http_date(t: SystemTime) -> HeaderValue {
    hv(&httpdate::fmt_http_date(t))
}

fn unix_now() -> u64 {
    secs(SystemTime::now())
}

/// Content types by extension, for stores that keep none.
pub fn content_type_for(object: &str) -> &'static str {
    let ext = object.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "m4a" => "audio/mp4",
        "webm" => "video/webm",
        "m3u8" => "application/vnd.apple.mpegurl",
        "ts" => "video/mp2t",
        "m4s" => "video/iso.segment",
        "mpd" => "application/dash+xml",
        "vtt" => "text/vtt; charset=utf-8",
        "mov" => "video/quicktime",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

/// The request's Origin if it may read answers, and whether it may do so with credentials (cookies): only an
/// origin listed by name, never one let in by `*` (spec §5.5).
fn origin_allowed<'a>(config: &Config, headers: &'a HeaderMap) -> Option<(&'a HeaderValue, bool)> {
    let origin = headers.get(header::ORIGIN)?;
    let o = origin.to_str().ok()?;
    let named = config.cors_origins.iter().any(|a| a == o);
    (named || config.cors_origins.iter().any(|a| a == "*")).then_some((origin, named))
}

/// CORS headers on every answer to an allowed origin, so players on another origin can read ranges.
fn cors(config: &Config, req: &HeaderMap, resp: &mut HeaderMap) {
    resp.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some((origin, credentials)) = origin_allowed(config, req) {
        resp.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if credentials {
            resp.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        resp.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Content-Range, Content-Length, Accept-Ranges, ETag"),
        );
    }
}

fn preflight(config: &Config, req: &HeaderMap) -> Response<Body> {
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

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(status, if status.is_server_error() { "unavailable" } else { "error" }, code, message)
}

/// A small JSON body a person and a program can both read. Never contains the token.
fn json(status: StatusCode, error: &str, reason: &str, message: &str) -> Response<Body> {
    json_value(status, &serde_json::json!({ "error": error, "reason": reason, "message": message }))
}

fn json_value(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = value.to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Counts the stream as active while it lives: dropped when the body ends or the client goes away.
struct Guard {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Guard {
    fn new(permit: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Guard {
        metrics.active_streams.inc();
        Guard { _permit: permit, metrics }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.metrics.active_streams.dec();
    }
}

/// The storage stream as body frames. A storage error ends the body with an error, so hyper aborts the
/// connection and the client sees a short body, never a complete-looking truncated one.
struct Metered {
    inner: futures::stream::BoxStream<'static, Result<Bytes, StorageError>>,
    metrics: Arc<Metrics>,
    _permit: Guard,
}

impl Stream for Metered {
    type Item = Result<Frame<Bytes>, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.metrics.bytes_sent.inc_by(chunk.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(error = %e, "storage failed mid-body; aborting the response");
                Poll::Ready(Some(Err(std::io::Error::other(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
