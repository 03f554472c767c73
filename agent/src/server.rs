//! The video service: one plain `async fn` per request, no framework. Routing, the token check and object
//! answers live here; refusals, conditional requests, CORS, sessions and rewritten manifests have modules of
//! their own.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::Stream;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use vd_token::{Claims, RequestAuth, Source, canonical_path};

use crate::access_log::AccessLog;
use crate::auth::Auth;
use crate::cache::{self, SliceCache};
use crate::conditional::{if_range_holds, not_modified, preconditions_hold, unix_now};
use crate::config::Config;
use crate::disk::DiskCache;
use crate::metadata::MetaCache;
use crate::metrics::Metrics;
use crate::range::{self, Plan};
use crate::refusal::{Refusal, empty, set};
use crate::storage::{Storage, StorageError};
use crate::{cors, manifest, manifest_response, sendfile, session};

pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// The smallest range sent with `--sendfile`: below it a copy costs less than the trip to the storage pool that
/// brings the pages in first.
const SENDFILE_MIN: u64 = 64 * 1024;

/// Parsed once: a name given as a string is parsed again on every use.
const X_CACHE: header::HeaderName = header::HeaderName::from_static("x-cache");

/// Everything a request needs, shared by all connections.
pub struct State {
    pub config: Config,
    pub storage: Storage,
    pub cache: SliceCache,
    pub meta: MetaCache,
    pub auth: Arc<Auth>,
    pub metrics: Arc<Metrics>,
    pub limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    pub streams: Arc<StreamSlots>,
    pub access_log: Arc<AccessLog>,
    route_prefix: String,
    /// `Cache-Control` for answers whose grant is in the URL (or that need none), as configured.
    cache_control: Option<HeaderValue>,
    /// The same, made `private`, for answers granted by a header or a cookie: their URL holds no token, so a
    /// shared cache keyed on the URL would hand them to anyone.
    cache_control_private: Option<HeaderValue>,
}

impl State {
    pub fn new(config: Config, storage: Storage, auth: Arc<Auth>, metrics: Arc<Metrics>) -> State {
        let limiter = NonZeroU32::new(config.rate_limit).map(|rate| {
            let burst = NonZeroU32::new(config.rate_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let route_prefix = config.route_prefix.trim_end_matches('/').to_owned();
        let streams = Arc::new(StreamSlots::new(config.max_streams));
        let disk = match (&config.disk_cache_dir, config.disk_cache_size_mib) {
            (Some(dir), mib) if mib > 0 => {
                DiskCache::start(dir, mib << 20, config.slice_size_kib << 10, config.storage_timeout, metrics.clone())
            }
            _ => None,
        };
        let cache = SliceCache::new(
            config.cache_size_mib << 20,
            config.slice_size_kib << 10,
            config.stream_memory_mib << 20,
            config.storage_timeout,
            disk,
            metrics.clone(),
        );
        let meta = MetaCache::new(config.metadata_ttl);
        let access_log = Arc::new(AccessLog::new(&config, metrics.clone()));
        let cache_control = HeaderValue::from_str(&config.cache_control).ok();
        let cache_control_private = HeaderValue::from_str(&private_cache_control(&config.cache_control)).ok();
        State {
            config,
            storage,
            cache,
            meta,
            auth,
            metrics,
            limiter,
            streams,
            access_log,
            route_prefix,
            cache_control,
            cache_control_private,
        }
    }
}

/// A `Cache-Control` value that no shared cache may keep: `public`, `s-maxage` and `proxy-revalidate` dropped,
/// `private` added unless the value already forbids storing.
pub fn private_cache_control(configured: &str) -> String {
    let kept: Vec<&str> = configured
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter(|d| {
            let name = d.split('=').next().unwrap_or("").trim().to_ascii_lowercase();
            !matches!(name.as_str(), "public" | "s-maxage" | "proxy-revalidate")
        })
        .collect();
    let closed = kept.iter().any(|d| d.eq_ignore_ascii_case("private") || d.eq_ignore_ascii_case("no-store"));
    if closed { kept.join(", ") } else { std::iter::once("private").chain(kept).collect::<Vec<_>>().join(", ") }
}

/// Answers one request. Never fails: every problem becomes a status code and a short JSON body.
pub async fn handle<B>(state: Arc<State>, peer: SocketAddr, req: Request<B>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let mut resp = route(&state, peer, &req).await.unwrap_or_else(|refusal| refusal.response(&state.metrics));
    cors::headers(&state.config, req.headers(), resp.headers_mut());
    resp.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    state.metrics.count_request(resp.status().as_u16());
    state.metrics.ttfb.observe(started.elapsed().as_secs_f64());
    if req.method() == Method::HEAD {
        *resp.body_mut() = empty();
    }
    Ok(resp)
}

async fn route<B>(state: &State, peer: SocketAddr, req: &Request<B>) -> Result<Response<Body>, Refusal> {
    let method = req.method();
    if req.version() == http::Version::HTTP_11 && req.headers().get_all(header::HOST).iter().count() != 1 {
        return Err(Refusal::HostRequired);
    }
    if method == Method::OPTIONS {
        return Ok(cors::preflight(&state.config, req.headers()));
    }
    let raw_path = req.uri().path();
    let carried = vd_token::split_path_carrier(raw_path, &state.route_prefix);
    let is_session = carried.is_none() && raw_path.strip_prefix(state.route_prefix.as_str()) == Some("/session");
    match (is_session, method) {
        (true, &Method::POST) | (false, &Method::GET | &Method::HEAD) => {}
        // A session is a credential: minting one on GET would let any link or <img> on another site do it.
        (true, _) => return Err(Refusal::MethodNotAllowed { allow: "POST, OPTIONS" }),
        (false, _) => return Err(Refusal::MethodNotAllowed { allow: "GET, HEAD, OPTIONS" }),
    }
    let client = crate::client::client_ip(&state.config.trusted_proxies, peer.ip(), req.headers());
    if let Some(limiter) = &state.limiter
        && let Err(not_until) = limiter.check_key(&client)
    {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
        return Err(Refusal::RateLimited { retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0) });
    }
    if is_session {
        return session::exchange(state, req, client);
    }

    // With the path carrier, the token comes out of the path before anything else looks at it (spec §5.4).
    let raw_path = carried.as_ref().map_or(raw_path, |c| c.path.as_str());
    let path = canonical_path(raw_path).map_err(Refusal::BadPath)?;
    let object = path
        .strip_prefix(state.route_prefix.as_str())
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|rest| !rest.is_empty())
        .ok_or(Refusal::NoRoute)?;

    // A manifest fetched through the path carrier needs no rewrite: its relative URIs inherit the token.
    let manifest = manifest::Kind::of(object).filter(|_| state.config.rewrite_manifests && carried.is_none());
    // Public prefixes are canonical folders ending in '/' (checked at start), so this is a folder match.
    let public = state.config.public_prefixes.iter().any(|p| path.starts_with(p.as_str()));
    let granted = if public {
        None
    } else {
        Some(authorize(state, req, &path, carried.as_ref().map(|c| c.token), client, manifest.is_some())?)
    };
    let cache_control = match granted.as_ref().map(|g| g.1) {
        Some(source) if !source.in_url() => state.cache_control_private.as_ref(),
        _ => state.cache_control.as_ref(),
    };
    let rewrite = manifest.zip(granted.as_ref().and_then(|g| g.0.as_ref()));

    // Metadata may be remembered (--metadata-ttl). A storage read that finds another ETag starts the answer over,
    // once, with fresh metadata, so a replaced object is served whole and new, never spliced.
    let answer = || async {
        match rewrite {
            Some((kind, claims)) => manifest_response::serve(state, req, object, raw_path, kind, claims).await,
            None => serve(state, req, object, cache_control).await,
        }
    };
    match answer().await {
        Ok(r) => Ok(r),
        Err(Failure::Refused(r)) => Err(r),
        Err(Failure::Changed) => {
            state.meta.invalidate(object).await;
            match answer().await {
                Ok(r) => Ok(r),
                Err(Failure::Refused(r)) => Err(r),
                Err(Failure::Changed) => Err(Refusal::Storage(StorageError::Changed)),
            }
        }
    }
}

/// Why an answer was not produced.
pub enum Failure {
    Refused(Refusal),
    /// Storage holds another version than the metadata said.
    Changed,
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Failure {
        Failure::Refused(r)
    }
}

impl From<StorageError> for Failure {
    fn from(e: StorageError) -> Failure {
        match e {
            StorageError::Changed => Failure::Changed,
            e => Failure::Refused(Refusal::Storage(e)),
        }
    }
}

/// The object, a range of it, or a 304 or 416, once the request is authorized.
async fn serve<B>(
    state: &State,
    req: &Request<B>,
    object: &str,
    cache_control: Option<&HeaderValue>,
) -> Result<Response<Body>, Failure> {
    let method = req.method();
    let meta = state.meta.get(&state.storage, object, &state.metrics).await.map_err(Refusal::Storage)?;
    let etag = meta.quoted_etag();
    // Room for every header a response gets, so the map never grows while it is filled.
    let mut headers = HeaderMap::with_capacity(16);
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(v) = &meta.etag_header {
        headers.insert(header::ETAG, v.clone());
    }
    headers.insert(header::LAST_MODIFIED, meta.last_modified_header.clone());
    if let Some(v) = cache_control {
        headers.insert(header::CACHE_CONTROL, v.clone());
    }

    if !preconditions_hold(req.headers(), etag, &meta) {
        return Err(Refusal::PreconditionFailed.into());
    }
    if not_modified(req.headers(), etag, &meta) {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        *r.headers_mut() = headers;
        return Ok(r);
    }

    let range_header = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok());
    let range_header = range_header.filter(|_| if_range_holds(req.headers(), etag, &meta));
    let (status, range) = match range::plan(range_header, meta.size) {
        Plan::Full => (StatusCode::OK, 0..meta.size),
        Plan::Partial(r) => (StatusCode::PARTIAL_CONTENT, r),
        Plan::Unsatisfiable => return Err(Refusal::RangeNotSatisfiable { size: meta.size }.into()),
    };
    if status == StatusCode::PARTIAL_CONTENT {
        headers.insert(header::CONTENT_RANGE, content_range(&range, meta.size));
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(range.end - range.start));

    let mut content_type = None;
    let mut cache_status = None;
    let body = if method == Method::HEAD || range.is_empty() {
        empty()
    } else {
        let permit = stream_permit(state)?;
        // An outbox comes only with the slice cache off (see `serve_spoken`): bytes the cache holds are copied from
        // memory, which measured faster than `sendfile` from the page cache.
        let sendfile = req.extensions().get::<sendfile::Outbox>().filter(|_| range.end - range.start >= SENDFILE_MIN);
        let file = match sendfile {
            Some(_) => state.storage.open_local(object, meta.etag.as_deref(), &range).await?,
            None => None,
        };
        let (opened, cached) = match (file, sendfile) {
            (Some(file), Some(outbox)) => {
                let pool = state.storage.pool().clone();
                let stream =
                    sendfile::file_body(pool, outbox.clone(), file, range.clone(), state.metrics.clone()).await?;
                (crate::storage::Body { stream, content_type: None }, cache::Status::Bypass)
            }
            _ => state.cache.read(&state.storage, object, meta.etag.as_deref(), meta.size, range.clone()).await?,
        };
        headers.insert(X_CACHE, HeaderValue::from_static(cached.as_str()));
        cache_status = Some(cached);
        content_type = opened.content_type;
        let stream = Metered::new(opened.stream, Guard::new(permit, state.metrics.clone()), state.metrics.clone());
        BodyExt::boxed_unsync(StreamBody::new(stream))
    };
    // A known media extension decides the type: stores often hold a wrong one (uploads default to
    // binary/octet-stream, some servers guess text/plain), and with `nosniff` browsers refuse to play those.
    // Other names keep the type storage has.
    let ct = match (content_type_for(object), content_type.as_deref()) {
        ("application/octet-stream", Some(stored)) => stored,
        (known, _) => known,
    };
    set(&mut headers, header::CONTENT_TYPE, ct);
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    if let Some(cached) = cache_status {
        // For the access log and the egress metric.
        r.extensions_mut().insert(cached);
    }
    Ok(r)
}

/// `bytes first-last/size`, built without the formatting machinery (this runs on nearly every request).
fn content_range(range: &std::ops::Range<u64>, size: u64) -> HeaderValue {
    let mut v = Vec::with_capacity(6 + 3 * 20 + 2);
    let mut num = itoa::Buffer::new();
    v.extend_from_slice(b"bytes ");
    v.extend_from_slice(num.format(range.start).as_bytes());
    v.push(b'-');
    v.extend_from_slice(num.format(range.end - 1).as_bytes());
    v.push(b'/');
    v.extend_from_slice(num.format(size).as_bytes());
    HeaderValue::from_maybe_shared(Bytes::from(v)).expect("digits, '-', '/' and a space are a valid header value")
}

/// A slot among the streams the agent serves at once, or 503 with Retry-After.
pub fn stream_permit(state: &State) -> Result<StreamSlot, Refusal> {
    state.streams.take().ok_or(Refusal::Busy)
}

/// The streams served at once (`--max-streams`). Nobody waits for a slot: a request that finds none gets 503.
pub struct StreamSlots {
    used: AtomicUsize,
    cap: usize,
}

impl StreamSlots {
    pub fn new(cap: usize) -> StreamSlots {
        StreamSlots { used: AtomicUsize::new(0), cap }
    }

    /// A slot, if one is free. One atomic add, no lock: every core takes and returns slots on every request
    /// (tokio's semaphore, used before, took its waiters' mutex on each return).
    pub fn take(self: &Arc<Self>) -> Option<StreamSlot> {
        if self.used.fetch_add(1, Ordering::AcqRel) >= self.cap {
            self.used.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(StreamSlot(self.clone()))
    }

    /// Slots taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// One stream's slot, returned when it drops.
pub struct StreamSlot(Arc<StreamSlots>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Checks the request's token. Returns the carrier it came in and, with `want_claims`, its claims, for the
/// tokens a rewritten manifest derives from it.
fn authorize<B>(
    state: &State,
    req: &Request<B>,
    path: &str,
    path_token: Option<&str>,
    client: IpAddr,
    want_claims: bool,
) -> Result<(Option<Claims>, Source), Refusal> {
    let verifier = state.auth.verifier().ok_or(Refusal::NoKeyring)?;
    let cookies = cookies(req);
    let auth = request_auth(req, path, path_token, client, &cookies);
    let verdict = if want_claims {
        verifier.verify_claims(&auth, unix_now()).map(|(claims, source)| (Some(claims), source))
    } else {
        verifier.verify(&auth, unix_now()).map(|grant| (None, grant.source))
    };
    verdict.map_err(Refusal::Token)
}

/// Each `Cookie` header's text (HTTP/2 may split cookies over several).
pub fn cookies<B>(req: &Request<B>) -> Vec<&str> {
    req.headers().get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).collect()
}

/// What the verifier looks at in a request.
pub fn request_auth<'a, B>(
    req: &'a Request<B>,
    path: &'a str,
    path_token: Option<&'a str>,
    client: IpAddr,
    cookies: &'a [&'a str],
) -> RequestAuth<'a> {
    RequestAuth {
        path,
        query: req.uri().query(),
        authorization: req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()),
        cookies,
        client_ip: Some(client),
        path_token,
    }
}

/// The authority the request was sent to: the URI's (HTTP/2) or the Host header's (HTTP/1.1).
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| req.headers().get(header::HOST).and_then(|v| v.to_str().ok()))
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

/// Counts the stream as active while it lives: dropped when the body ends or the client goes away.
pub struct Guard {
    _permit: StreamSlot,
    metrics: Arc<Metrics>,
}

impl Guard {
    pub fn new(permit: StreamSlot, metrics: Arc<Metrics>) -> Guard {
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
pub struct Metered {
    inner: futures::stream::BoxStream<'static, Result<Bytes, StorageError>>,
    metrics: Arc<Metrics>,
    _permit: Guard,
}

impl Metered {
    pub fn new(
        inner: futures::stream::BoxStream<'static, Result<Bytes, StorageError>>,
        permit: Guard,
        metrics: Arc<Metrics>,
    ) -> Metered {
        Metered { inner, metrics, _permit: permit }
    }
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

#[cfg(test)]
mod tests {
    use super::private_cache_control;

    #[test]
    fn stream_slots_never_exceed_the_cap_and_come_back_when_dropped() {
        let slots = std::sync::Arc::new(super::StreamSlots::new(2));
        let (a, b) = (slots.take().unwrap(), slots.take().unwrap());
        assert!(slots.take().is_none(), "a third stream at a cap of 2");
        assert_eq!(slots.used(), 2, "a refused take leaves the count as it was");
        drop(a);
        let c = slots.take().expect("a dropped slot is free again");
        drop((b, c));
        assert_eq!(slots.used(), 0);
        // From many threads at once: never more than the cap held.
        use std::sync::atomic::Ordering::SeqCst;
        let slots = std::sync::Arc::new(super::StreamSlots::new(3));
        let (held, peak) = (std::sync::atomic::AtomicUsize::new(0), std::sync::atomic::AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        if let Some(slot) = slots.take() {
                            peak.fetch_max(held.fetch_add(1, SeqCst) + 1, SeqCst);
                            held.fetch_sub(1, SeqCst);
                            drop(slot);
                        }
                    }
                });
            }
        });
        assert_eq!(slots.used(), 0);
        assert!((1..=3).contains(&peak.load(SeqCst)), "slots held at once: {}", peak.load(SeqCst));
    }

    #[test]
    fn content_range_names_first_and_last_byte_and_size() {
        assert_eq!(super::content_range(&(0..2), 67_108_864), "bytes 0-1/67108864");
        assert_eq!(
            super::content_range(&(100..u64::MAX), u64::MAX),
            format!("bytes 100-{}/{}", u64::MAX - 1, u64::MAX)
        );
    }

    #[test]
    fn private_cache_control_never_lets_a_shared_cache_keep_the_answer() {
        assert_eq!(private_cache_control("public, max-age=86400, s-maxage=600"), "private, max-age=86400");
        assert_eq!(private_cache_control("private, max-age=3600"), "private, max-age=3600");
        assert_eq!(private_cache_control("no-store"), "no-store");
        assert_eq!(private_cache_control("max-age=60, Public, immutable"), "private, max-age=60, immutable");
        assert_eq!(private_cache_control(""), "private");
    }
}
