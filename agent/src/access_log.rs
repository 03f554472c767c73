//! The access log: one line per request on stdout, written when the answer's body ends (so the bytes sent are
//! known) or when the client goes away first. The egress, refusal and stream metrics are counted here too, so
//! they hold whether the log is on, off or sampled.
//!
//! Never in a line: a token, a signature or a cookie. The path carrier's token and the `token`, `key` and
//! `signature` query parameters are replaced by `REDACTED`; `Authorization`, `Cookie` and `Set-Cookie` are not read.
//!
//! Serving never waits on stdout: lines go through a bounded queue to a writer thread, and a line that finds the
//! queue full is dropped and counted (`videodelivery_agent_access_log_dropped_total`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use crate::cache;
use crate::config::{Config, LogFormat};
use crate::metrics::{Metrics, ReasonLabel};
use crate::refusal::Refused;
use crate::server::Body;

/// Lines queued for the writer at most; beyond, lines are dropped rather than held in memory.
const QUEUE_LINES: usize = 8192;
/// The writer hands stdout batches of up to this many bytes (one `write` for many lines when it falls behind).
const BATCH_BYTES: usize = 64 * 1024;
/// Longest `X-Request-Id` kept from a client; a longer one is replaced.
pub const MAX_REQUEST_ID: usize = 128;
/// Parsed once: a name given as a string is parsed again on every use.
const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");
/// What stands for a secret in a logged path.
const REDACTED: &str = "REDACTED";
/// Query parameters that carry a secret (the compact token or the signature), redacted in logged paths.
const SECRET_PARAMS: [&str; 3] = ["token", "key", "signature"];

/// The access log of one agent: its switches, its queue, and the ids it generates.
pub struct AccessLog {
    queue: Option<SyncSender<String>>,
    /// Lines queued and not yet written, so shutdown can wait for them.
    queued: Arc<AtomicUsize>,
    format: LogFormat,
    /// Successful answers are logged when a random u64 falls below this.
    sample_below: u64,
    ids: RequestIds,
    route_prefix: String,
    trusted_proxies: Vec<ipnet::IpNet>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// Starts the writer thread when the log is on (if the thread cannot start, the log is off and says so).
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> AccessLog {
        let queued = Arc::new(AtomicUsize::new(0));
        let queue = config.access_log.then(|| writer(metrics.clone(), queued.clone())).flatten();
        let ratio = config.access_log_sample.clamp(0.0, 1.0);
        let sample_below = if ratio >= 1.0 { u64::MAX } else { (ratio * u64::MAX as f64) as u64 };
        AccessLog {
            queue,
            queued,
            format: config.access_log_format,
            sample_below,
            ids: RequestIds::new(),
            route_prefix: config.route_prefix.trim_end_matches('/').to_owned(),
            trusted_proxies: config.trusted_proxies.clone(),
            metrics,
        }
    }

    /// What is known of a request when it arrives. Dropped unanswered (the client went away while the agent was
    /// still working on it), it logs itself as 499.
    pub fn begin<B>(self: &Arc<Self>, peer: SocketAddr, req: &Request<B>) -> Pending {
        let headers = req.headers();
        let request_id = headers
            .get(X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|id| sane_request_id(id))
            .map(str::to_owned)
            .unwrap_or_else(|| self.ids.next());
        // With the log off only the status, cache and timing are read (for the metrics): the line's text fields
        // are left empty rather than built for nothing on every request.
        let on = self.queue.is_some();
        let entry = Entry {
            log: "access",
            duration_ms: 0.0,
            time: if on { SystemTime::now() } else { SystemTime::UNIX_EPOCH },
            started: Instant::now(),
            request_id,
            method: if on { req.method().as_str().to_owned() } else { String::new() },
            path: if on { redact(req.uri().path(), req.uri().query(), &self.route_prefix) } else { String::new() },
            version: version(req.version()),
            client: if on { crate::client::client_ip(&self.trusted_proxies, peer.ip(), headers) } else { peer.ip() },
            user_agent: on
                .then(|| headers.get(header::USER_AGENT).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .flatten(),
            status: 499,
            bytes: 0,
            ttfb: None,
            cache: "none",
            refusal: None,
            outcome: Outcome::Aborted,
        };
        Pending { log: self.clone(), entry: Some(entry) }
    }

    /// Waits up to `within` for queued lines to reach stdout (at shutdown).
    pub async fn drain(&self, within: Duration) {
        let until = Instant::now() + within;
        while self.queued.load(Ordering::Relaxed) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn finish(&self, mut entry: Entry) {
        if entry.outcome == Outcome::Aborted {
            self.metrics.client_aborts.inc();
        }
        let Some(queue) = &self.queue else { return };
        let always = entry.status >= 400 || entry.refusal.is_some() || entry.outcome != Outcome::Complete;
        if !always && self.sample_below != u64::MAX && self.ids.random() >= self.sample_below {
            return;
        }
        let line = match self.format {
            LogFormat::Json => entry.json(),
            LogFormat::Text => entry.text(),
        };
        self.queued.fetch_add(1, Ordering::Relaxed);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = queue.try_send(line) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.metrics.access_log_dropped.inc();
        }
    }
}

/// Starts the thread that writes queued lines to stdout, in batches, each under stdout's lock so that no tracing
/// line lands in the middle of one.
fn writer(metrics: Arc<Metrics>, queued: Arc<AtomicUsize>) -> Option<SyncSender<String>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<String>(QUEUE_LINES);
    let spawned =
        std::thread::Builder::new().name("access-log".into()).spawn(move || write_lines(&rx, &metrics, &queued));
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the access log writer; the access log is off");
            None
        }
    }
}

fn write_lines(rx: &Receiver<String>, metrics: &Metrics, queued: &AtomicUsize) {
    use std::io::Write;
    let mut batch = String::with_capacity(BATCH_BYTES);
    while let Ok(line) = rx.recv() {
        batch.push_str(&line);
        let mut lines = 1;
        while batch.len() < BATCH_BYTES
            && let Ok(line) = rx.try_recv()
        {
            batch.push_str(&line);
            lines += 1;
        }
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        match out.write_all(batch.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => metrics.access_log_lines.inc_by(lines),
            Err(_) => metrics.access_log_dropped.inc_by(lines),
        };
        drop(out);
        queued.fetch_sub(lines as usize, Ordering::Relaxed);
        batch.clear();
    }
}

/// How an answer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The whole body was handed to the connection.
    Complete,
    /// The client went away (or the connection broke) before the body ended.
    Aborted,
    /// Storage failed mid-body; the connection was cut so the client sees a short body.
    Failed,
}

/// One line of the log.
#[derive(Serialize)]
struct Entry {
    /// Always "access": tells these lines from the agent's other (tracing) lines on the same stdout.
    log: &'static str,
    #[serde(serialize_with = "rfc3339")]
    time: SystemTime,
    #[serde(skip)]
    started: Instant,
    request_id: String,
    method: String,
    path: String,
    #[serde(rename = "http_version")]
    version: &'static str,
    status: u16,
    bytes: u64,
    #[serde(rename = "ttfb_ms", serialize_with = "millis_opt")]
    ttfb: Option<Duration>,
    /// Set when the line is written.
    duration_ms: f64,
    cache: &'static str,
    refusal: Option<&'static str>,
    client: IpAddr,
    user_agent: Option<String>,
    outcome: Outcome,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

fn millis_opt<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(millis(*d)),
        None => s.serialize_none(),
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Entry {
    fn json(&mut self) -> String {
        self.duration_ms = millis(self.started.elapsed());
        // Serializing plain fields cannot fail.
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }

    /// `time client id "METHOD path VERSION" status bytes ttfb duration cache=… refusal=… outcome=… "agent"`; the
    /// request line and the user agent are quoted with escapes, so no client text can start a line of its own.
    fn text(&self) -> String {
        let request = format!("{} {} {}", self.method, self.path, self.version);
        let ttfb = self.ttfb.map_or_else(|| "-".to_owned(), |d| format!("{}ms", millis(d)));
        format!(
            "{} access {} {} {:?} {} {} ttfb={} duration={}ms cache={} refusal={} outcome={} ua={:?}\n",
            humantime::format_rfc3339_millis(self.time),
            self.client,
            self.request_id,
            request,
            self.status,
            self.bytes,
            ttfb,
            millis(self.started.elapsed()),
            self.cache,
            self.refusal.unwrap_or("-"),
            match self.outcome {
                Outcome::Complete => "complete",
                Outcome::Aborted => "aborted",
                Outcome::Failed => "failed",
            },
            self.user_agent.as_deref().unwrap_or("-"),
        )
    }
}

/// A request being answered. [`Pending::respond`] turns it into the answer's body wrapper.
pub struct Pending {
    log: Arc<AccessLog>,
    entry: Option<Entry>,
}

impl Pending {
    /// Counts the answer (refusal, stream), returns the request id in `X-Request-Id`, and wraps the body so the
    /// line is written when it ends.
    pub fn respond(mut self, mut resp: Response<Body>) -> Response<Body> {
        let Some(mut entry) = self.entry.take() else { return resp };
        let metrics = &self.log.metrics;
        entry.status = resp.status().as_u16();
        entry.ttfb = Some(entry.started.elapsed());
        entry.refusal = resp.extensions().get::<Refused>().map(|r| r.0);
        entry.cache = resp.extensions().get::<cache::Status>().map_or("none", |s| s.label());
        if let Some(reason) = entry.refusal {
            metrics.refusals.get_or_create(&ReasonLabel { reason }).inc();
        }
        if entry.cache != "none" {
            metrics.count_stream(entry.cache);
        }
        if let Ok(v) = HeaderValue::from_str(&entry.request_id) {
            resp.headers_mut().insert(X_REQUEST_ID, v);
        }
        let served = metrics.served.get(entry.status, entry.cache);
        let log = self.log.clone();
        // hyper stops polling a body once Content-Length bytes are out, and drops it: that is complete, not aborted.
        let length = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        resp.map(|inner| {
            let length = length.or(inner.size_hint().exact());
            http_body_util::BodyExt::boxed_unsync(Logged { inner, served, log, length, entry: Some(entry) })
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.log.finish(entry);
        }
    }
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// An answer's body, counting the bytes it hands to the connection; logs its line when it ends or is dropped.
struct Logged {
    inner: Body,
    served: Counter,
    log: Arc<AccessLog>,
    /// The body's length when known (Content-Length, or a sized body).
    length: Option<u64>,
    entry: Option<Entry>,
}

impl Logged {
    fn complete(&self) -> bool {
        self.inner.is_end_stream() || self.entry.as_ref().is_some_and(|e| Some(e.bytes) == self.length)
    }

    fn end(&mut self, outcome: Outcome) {
        if let Some(mut entry) = self.entry.take() {
            entry.outcome = outcome;
            self.log.finish(entry);
        }
    }
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    self.served.inc_by(n);
                    if let Some(e) = &mut self.entry {
                        e.bytes += n;
                    }
                }
                if self.complete() {
                    self.end(Outcome::Complete);
                }
            }
            Poll::Ready(Some(Err(_))) => self.end(Outcome::Failed),
            Poll::Ready(None) => self.end(Outcome::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // hyper drops a body it never polls (HEAD, 304, an empty body) once it is done with it: that is complete.
        let outcome = if self.complete() { Outcome::Complete } else { Outcome::Aborted };
        self.end(outcome);
    }
}

/// A client's `X-Request-Id` is kept when it is 1 to 128 characters of letters, digits and `-_.:+/=@`: enough
/// for UUIDs, ULIDs and trace ids, and nothing that could break a log line or a header.
pub fn sane_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(&b))
}

/// Request ids and sampling draws: a random 64-bit seed per process mixed with a counter (SplitMix64), so ids are
/// unique within an agent and unlikely to collide across agents. Each thread takes a block of 2^32 counter values
/// at a time, so a request touches no counter shared between cores.
struct RequestIds {
    seed: u64,
}

/// Blocks handed out so far, process-wide (so two agents in one process never share a block).
static BLOCKS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's next counter value and the end of its block (0, 0 before its first id).
    static BLOCK: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

impl RequestIds {
    fn new() -> RequestIds {
        let mut seed = [0u8; 8];
        // Without OS randomness (never expected), ids are still unique within the process.
        if getrandom::fill(&mut seed).is_err() {
            tracing::warn!("no OS randomness for request ids; they may repeat across agents");
        }
        RequestIds { seed: u64::from_le_bytes(seed) }
    }

    fn random(&self) -> u64 {
        let n = BLOCK.with(|b| {
            let (mut next, mut end) = b.get();
            if next == end {
                next = BLOCKS.fetch_add(1, Ordering::Relaxed) << 32;
                end = next + (1 << 32);
            }
            b.set((next + 1, end));
            next
        });
        splitmix64(self.seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    }

    fn next(&self) -> String {
        hex(self.random())
    }
}

/// Sixteen lowercase hex digits, without the formatting machinery (this runs on every request).
fn hex(n: u64) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    (0..16).rev().map(|i| char::from(DIGITS[(n >> (i * 4)) as usize & 0xf])).collect()
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The request target as logged: the path carrier's token (`{prefix}/t/{token}/…`) and the values of the
/// `token`, `key` and `signature` parameters replaced by `REDACTED`; other parameters kept as sent. A parameter
/// is matched by its decoded name, as the verifier reads it, so `%73ignature=` is redacted too.
pub fn redact(path: &str, query: Option<&str>, route_prefix: &str) -> String {
    let mut out = match vd_token::split_path_carrier(path, route_prefix) {
        Some(c) => {
            let token_end = route_prefix.len() + "/t/".len() + c.token.len();
            format!("{route_prefix}/t/{REDACTED}{}", path.get(token_end..).unwrap_or(""))
        }
        None => path.to_owned(),
    };
    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            let raw_name = pair.split('=').next().unwrap_or("");
            let name: String = form_urlencoded::parse(raw_name.as_bytes()).map(|(k, _)| k.into_owned()).collect();
            if SECRET_PARAMS.contains(&name.as_str()) {
                out.push_str(raw_name);
                out.push('=');
                out.push_str(REDACTED);
            } else {
                out.push_str(pair);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_the_target_are_redacted() {
        assert_eq!(
            redact("/videos/a.mp4", Some("expires=9&kid=k1&signature=c2VjcmV0&x=1"), "/videos"),
            "/videos/a.mp4?expires=9&kid=k1&signature=REDACTED&x=1"
        );
        assert_eq!(redact("/videos/a.mp4", Some("token=abc.def"), "/videos"), "/videos/a.mp4?token=REDACTED");
        assert_eq!(
            redact("/videos/a.mp4", Some("%73ignature=zzz&key=q"), "/videos"),
            "/videos/a.mp4?%73ignature=REDACTED&key=REDACTED"
        );
        assert_eq!(redact("/videos/t/abc.def/hls/x.ts", None, "/videos"), "/videos/t/REDACTED/hls/x.ts");
        assert_eq!(redact("/t/abc.def", None, ""), "/t/REDACTED");
        assert_eq!(redact("/videos/public/a.jpg", None, "/videos"), "/videos/public/a.jpg");
    }

    #[test]
    fn generated_request_ids_are_sixteen_hex_digits_of_the_draw() {
        for n in [0, 1, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef] {
            let id = hex(n);
            assert_eq!(id, format!("{n:016x}"));
        }
    }

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        assert!(sane_request_id("0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(sane_request_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(!sane_request_id(""));
        assert!(!sane_request_id("a b"));
        assert!(!sane_request_id("x\"}\n{\"forged\":1"));
        assert!(!sane_request_id(&"a".repeat(MAX_REQUEST_ID + 1)));
        let ids = RequestIds::new();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert!(sane_request_id(&a) && a.len() == 16);
    }
}
