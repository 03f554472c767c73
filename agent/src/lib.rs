//! The VideoDelivery agent: verifies signed tokens and streams byte ranges from object storage.
//!
//! It is a library too, so tests can start it in-process on a free port.

pub mod access_log;
pub mod auth;
pub mod cache;
pub mod client;
pub mod conditional;
pub mod config;
pub mod connections;
pub mod cors;
pub mod disk;
pub mod local;
pub mod manifest;
pub mod manifest_response;
pub mod metadata;
pub mod metrics;
pub mod range;
pub mod refusal;
pub mod sendfile;
pub mod server;
pub mod session;
pub mod storage;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use vd_token::Policy;

use crate::auth::Auth;
use crate::config::Config;
use crate::connections::{Activity, Listener, Tracked};
use crate::metrics::Metrics;
use crate::server::State;
use crate::storage::{Location, S3Options, Storage};
use crate::tls::Tls;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("--route-prefix must start with '/' and be a canonical path: {0:?}")]
    RoutePrefix(String),
    #[error("--session-cookie-same-site=none needs a Secure cookie: browsers drop it with --session-cookie-insecure")]
    InsecureSameSiteNone,
    #[error(
        "--public-prefix {0:?} must be a folder under the route prefix ending in '/', like {1}/public/ \
         (without the '/', it would also open every name that merely starts with it)"
    )]
    PublicPrefix(String, String),
    #[error(
        "the keyring {keyring} lies inside the storage root {root}: anyone with a token could download the \
         signing keys; mount it elsewhere"
    )]
    KeyringInsideStorage { keyring: String, root: String },
    #[error("--disk-cache-size-mib needs --disk-cache-dir, the directory the slices spill to")]
    DiskCacheDir,
    #[error("--tls-cert and --tls-key go together: give both for HTTPS, or neither for cleartext")]
    TlsHalf,
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

/// A started agent: its bound addresses and its shared state.
pub struct Agent {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: Arc<State>,
    /// Set when the video port serves HTTPS.
    pub tls: Option<Arc<Tls>>,
    video: TcpListener,
    admin: TcpListener,
}

impl Agent {
    /// Binds both ports, builds the storage client and loads the keyring (a missing keyring is not fatal: the
    /// agent reports not-ready and keeps polling for it).
    pub async fn bind(mut config: Config) -> Result<Agent, StartError> {
        let prefix = config.route_prefix.trim_end_matches('/').to_owned();
        if !prefix.is_empty() && vd_token::canonical_path(&prefix).is_err() {
            return Err(StartError::RoutePrefix(config.route_prefix.clone()));
        }
        if config.session_ttl > config.max_token_lifetime {
            // A session token is still a token: the lifetime cap applies to it too (token format §5.5).
            tracing::info!(session_ttl = ?config.max_token_lifetime, "--session-ttl capped at --max-token-lifetime");
            config.session_ttl = config.max_token_lifetime;
        }
        if config.session_cookie_insecure && config.session_cookie_same_site == config::SameSite::None {
            return Err(StartError::InsecureSameSiteNone);
        }
        for p in &config.public_prefixes {
            let canonical = vd_token::canonical_prefix(p).is_ok_and(|c| c == p.as_str());
            if !canonical || !p.starts_with(&format!("{prefix}/")) {
                return Err(StartError::PublicPrefix(p.clone(), prefix.clone()));
            }
        }
        let location = Location::parse(&config.storage)?;
        if let Location::Dir(root) = &location {
            check_keyring_outside(&config.keyring, root)?;
        }
        let s3 = S3Options {
            endpoint: config.s3_endpoint.clone(),
            region: config.s3_region.clone(),
            path_style: config.s3_path_style,
        };
        let storage = Storage::new(&location, &s3, config.storage_timeout, config.max_storage_threads as usize)?;
        let mut metrics = Metrics::default();
        match (&config.disk_cache_dir, config.disk_cache_size_mib) {
            (_, 0) => {}
            (Some(_), _) => metrics.register_disk(),
            (None, _) => return Err(StartError::DiskCacheDir),
        }
        // Before binding, so a certificate that cannot be served stops the agent at once with the reason.
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                metrics.register_tls();
                Some(Arc::new(Tls::load(cert.clone(), key.clone(), &metrics)?))
            }
            (None, None) => None,
            _ => return Err(StartError::TlsHalf),
        };
        let metrics = Arc::new(metrics);
        let policy =
            Policy { max_lifetime: config.max_token_lifetime.as_secs(), clock_skew: config.clock_skew.as_secs() };
        let auth = Arc::new(Auth::new(config.keyring.clone(), policy));
        if let Err(e) = auth.reload(&metrics) {
            tracing::warn!(error = %e, "no keyring loaded yet; not ready");
        }
        let bind =
            |addr| async move { TcpListener::bind(addr).await.map_err(|source| StartError::Listen { addr, source }) };
        let video =
            reusable_listener(config.listen).map_err(|source| StartError::Listen { addr: config.listen, source })?;
        let admin = bind(config.admin_listen).await?;
        let addr = video.local_addr().map_err(|source| StartError::Listen { addr: config.listen, source })?;
        let admin_addr =
            admin.local_addr().map_err(|source| StartError::Listen { addr: config.admin_listen, source })?;
        let state = Arc::new(State::new(config, storage, auth, metrics));
        Ok(Agent { addr, admin_addr, state, tls, video, admin })
    }

    /// Serves until `shutdown` completes, then stops accepting and lets running streams finish for up to the
    /// configured grace period. Connections are served on the runtime that calls this (tests, embedding).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        // Serving on this runtime starts no thread: there is no error to return.
        if let Err(e) = self.serve_with(Workers::Here, shutdown).await {
            tracing::error!(error = %e, "serving failed");
        }
    }

    /// As [`Agent::serve`], with the video port's connections served by `workers`. Fails only if the worker
    /// threads cannot start (the process should then exit non-zero, so its supervisor sees it).
    pub async fn serve_with(self, workers: Workers, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let state = self.state;
        tokio::spawn(state.auth.clone().watch(state.metrics.clone(), state.config.keyring_poll));
        if let Some(tls) = &self.tls {
            tokio::spawn(tls.clone().watch(state.metrics.clone(), state.config.tls_poll));
        }
        if let Some(_limiter) = &state.limiter {
            let s = state.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    // Forget clients that have been quiet, so the limiter's memory stays bounded.
                    if let Some(l) = &s.limiter {
                        l.retain_recent();
                    }
                }
            });
        }
        let draining = Arc::new(AtomicBool::new(false));
        tokio::spawn(serve_admin(self.admin, state.clone(), draining.clone()));

        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(state.config.header_timeout)
            .max_buf_size(64 * 1024);
        // Pings find peers that vanished without a FIN; the idle timeout closes the ones that answer but ask nothing.
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(64 * 1024)
            .max_concurrent_streams(100)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10));
        let cap = state.config.max_connections as usize;
        let front = Front {
            conn: Conn { state: state.clone(), builder, tls: self.tls },
            graceful: Arc::new(GracefulShutdown::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(cap)),
        };
        let (phase, phase_rx) = tokio::sync::watch::channel(Phase::Accepting);
        // Each accept loop holds a sender; the channel closes once every loop has dropped its listener.
        let (loops_open, mut loops_closed) = tokio::sync::mpsc::channel::<()>(1);
        let threads = match workers {
            Workers::Here => {
                let listener = Listener::sharing(self.video, front.slots.clone(), cap, "video");
                tokio::spawn(front.clone().accept_loop(listener, phase_rx.clone(), loops_open));
                Vec::new()
            }
            Workers::Threads(n) => match front.start_threads(self.video, n.max(1), &phase_rx, &loops_open) {
                Ok(threads) => {
                    drop(loops_open);
                    threads
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the worker threads");
                    return Err(e);
                }
            },
        };
        shutdown.await;
        // Fail readiness first, keep accepting while endpoints converge, then close the listener and drain.
        draining.store(true, Ordering::Relaxed);
        let delay = state.config.shutdown_delay;
        tracing::info!(?delay, "shutting down: not ready; still accepting while load balancers catch up");
        tokio::time::sleep(delay).await;
        let _ = phase.send(Phase::Closed);
        while loops_closed.recv().await.is_some() {}
        let grace = state.config.shutdown_grace;
        tracing::info!(?grace, "listener closed: draining running streams");
        // Every accept loop has ended, and with it its share of the graceful handle.
        match Arc::try_unwrap(front.graceful) {
            Ok(graceful) => match tokio::time::timeout(grace, graceful.shutdown()).await {
                Ok(()) => tracing::info!("all connections closed"),
                Err(_) => tracing::warn!("grace period over; closing remaining connections"),
            },
            Err(_) => tracing::warn!("an accept loop is still running; closing remaining connections"),
        }
        let _ = phase.send(Phase::Exit);
        state.access_log.drain(Duration::from_secs(1)).await;
        if !threads.is_empty() {
            // Each worker's runtime gives its stuck storage calls (if any) a second, as the main one does.
            let joined = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join())));
            let _ = tokio::time::timeout(Duration::from_secs(3), joined).await;
        }
        Ok(())
    }
}

/// Where the video port's connections are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workers {
    /// On the runtime that calls [`Agent::serve_with`] (tests, embedding).
    Here,
    /// On `n` threads, each with a single-threaded runtime, as nginx runs its workers: all accept on one
    /// listening socket, or each on its own (`SO_REUSEPORT`, `--reuse-port`). A connection stays on the thread
    /// that took it, and each thread serves its ready connections in turn: on tokio's work-stealing runtime,
    /// connections woken past its local queue's 256 slots waited their turn behind those in it, and at 1,000 busy
    /// connections p99 was 4x nginx's (bench/RESULTS.md).
    Threads(usize),
}

/// What each accept loop shares: how to serve a connection, the graceful-shutdown handle and the connection cap.
#[derive(Clone)]
struct Front {
    conn: Conn,
    graceful: Arc<GracefulShutdown>,
    slots: Arc<tokio::sync::Semaphore>,
}

/// What each connection's task holds.
#[derive(Clone)]
struct Conn {
    state: Arc<State>,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<Arc<Tls>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Accepting,
    /// Listeners closed; connections finishing.
    Closed,
    /// Connections done or past the grace period: worker threads end.
    Exit,
}

impl Front {
    /// One thread per worker, each accepting on `video` (a copy of the socket) or, with `--reuse-port`, on a
    /// socket of its own on its address.
    fn start_threads(
        &self,
        video: TcpListener,
        n: usize,
        phase: &tokio::sync::watch::Receiver<Phase>,
        loops_open: &tokio::sync::mpsc::Sender<()>,
    ) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
        let addr = video.local_addr()?;
        let video = video.into_std()?;
        let reuse_port = self.conn.state.config.reuse_port;
        let mut sockets: Vec<Option<std::net::TcpListener>> = (1..n)
            .map(|_| if reuse_port { Ok(None) } else { video.try_clone().map(Some) })
            .collect::<std::io::Result<_>>()?;
        sockets.insert(0, Some(video));
        let blocking = self.conn.state.config.max_storage_threads as usize + 512;
        let cpus = allowed_cpus();
        let pin = self.conn.state.config.pin_workers && cpus.len() == n;
        if pin {
            tracing::info!(?cpus, "one worker pinned to each CPU");
        }
        (0..n)
            .map(|i| {
                let shared = sockets[i].take();
                let cpu = cpus.get(i).copied().filter(|_| pin);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .max_blocking_threads(blocking)
                    .build()?;
                let (front, mut phase, loops_open) = (self.clone(), phase.clone(), loops_open.clone());
                std::thread::Builder::new().name(format!("vd-worker-{i}")).spawn(move || {
                    if let Some(cpu) = cpu {
                        pin_to(cpu);
                    }
                    runtime.block_on(async {
                        // The socket bound at start (or a copy of it), or one of its own on the address.
                        let socket = match shared {
                            Some(socket) => TcpListener::from_std(socket),
                            None => reusable_listener(addr),
                        };
                        match socket {
                            Ok(l) => {
                                let listener = Listener::sharing(l, front.slots.clone(), front.cap(), "video");
                                front.accept_loop(listener, phase.clone(), loops_open).await;
                            }
                            Err(e) => tracing::error!(error = %e, worker = i, "worker cannot listen"),
                        }
                        // Its connections run on this runtime until the grace period is over.
                        let _ = phase.wait_for(|p| *p == Phase::Exit).await;
                    });
                    // A storage read stuck in the kernel holds a blocking thread nothing can cancel.
                    runtime.shutdown_timeout(Duration::from_secs(1));
                })
            })
            .collect()
    }

    fn cap(&self) -> usize {
        self.conn.state.config.max_connections as usize
    }

    /// Accepts and spawns connections until the phase leaves `Accepting`; then drops the listener and its share
    /// of the graceful handle.
    async fn accept_loop(
        self,
        listener: Listener,
        mut phase: tokio::sync::watch::Receiver<Phase>,
        open: tokio::sync::mpsc::Sender<()>,
    ) {
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    // Watched from its accept on: a shutdown can never miss a connection still being set up.
                    tokio::spawn(self.conn.clone().serve(accepted, self.graceful.watcher()));
                }
                _ = phase.wait_for(|p| *p != Phase::Accepting) => break,
            }
        }
        // The listener and this loop's share of the graceful handle go before the word that the loop is done.
        drop((listener, self));
        drop(open);
    }
}

impl Conn {
    async fn serve(self, (stream, peer, slot): (TcpStream, SocketAddr, OwnedSemaphorePermit), watcher: Watcher) {
        let _slot = slot;
        let state = self.state;
        let accepted = Instant::now();
        let _ = stream.set_nodelay(true);
        connections::limit_unsent(&stream);
        let header_timeout = state.config.header_timeout;
        // Before protocol detection hyper's header timeout does not run: a silent client is dropped here.
        if !connections::first_byte(&stream, header_timeout).await {
            return;
        }
        // Boxed: a silent connection's task stays small, and only one that has spoken carries the state of a TLS
        // handshake and an HTTP connection (10,000 silent ones took 77 MiB unboxed, 23 MiB boxed).
        let left = header_timeout.saturating_sub(accepted.elapsed());
        Box::pin(serve_spoken(stream, self.tls, left, self.builder, state, peer, watcher)).await
    }
}

/// The CPUs this process may run on (its affinity mask), in order; empty if it cannot be read.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and the kernel writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
}

/// Keeps the calling thread on `cpu`; a failure is logged and the thread runs unpinned.
fn pin_to(cpu: usize) {
    // SAFETY: as above; `cpu` comes from the process's own mask, below CPU_SETSIZE.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        tracing::warn!(cpu, error = %std::io::Error::last_os_error(), "cannot pin a worker; it runs unpinned");
    }
}

/// A listener on `addr` that more sockets may share (`SO_REUSEPORT`): with `--reuse-port` each worker thread
/// listens on one of its own, and the kernel spreads new connections over them by a hash, as nginx's
/// `reuseport`. Only a process of the same user could add a socket of its own.
fn reusable_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves a connection that has sent its first byte: cleartext, or TLS once the handshake is done within `left`.
async fn serve_spoken(
    stream: TcpStream,
    tls: Option<Arc<Tls>>,
    left: Duration,
    builder: auto::Builder<TokioExecutor>,
    state: Arc<State>,
    peer: SocketAddr,
    watcher: Watcher,
) {
    let Some(tls) = tls else {
        if state.config.sendfile && state.storage.is_local() && state.cache.is_off() {
            // hyper must queue body chunks as they are (vectored writes), never copy them: see `sendfile`.
            let mut builder = builder;
            builder.http1().writev(true);
            let (stream, outbox) = sendfile::SendfileStream::new(stream);
            return serve_connection(stream, builder, state, peer, watcher, Some(outbox)).await;
        }
        return serve_connection(stream, builder, state, peer, watcher, None).await;
    };
    // The handshake shares the header timeout with the first byte: a client that starts one and stalls holds its
    // slot no longer than one that sends nothing.
    let stream = match tokio::time::timeout(left, tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return tracing::debug!(error = %e, %peer, "TLS handshake failed"),
        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
    };
    // Over TLS the protocol is what ALPN chose (RFC 9113 §3.2): no client sends h2 without asking for it.
    let builder = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => builder.http2_only(),
        _ => builder.http1_only(),
    };
    serve_connection(stream, builder, state, peer, watcher, None).await
}

/// Serves HTTP on one connection, cleartext or TLS, until it ends, idles past the idle timeout, or shutdown's grace
/// period runs out. With an `outbox` (cleartext, `--sendfile`), HTTP/1 requests may get file bodies sent with
/// `sendfile`.
async fn serve_connection<I>(
    io: I,
    builder: auto::Builder<TokioExecutor>,
    state: Arc<State>,
    peer: SocketAddr,
    watcher: Watcher,
    outbox: Option<sendfile::Outbox>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle_timeout = state.config.idle_timeout;
    let activity = Activity::new();
    let tracked = activity.clone();
    // hyper keeps a slot the size of the service's future for the whole connection: boxing the future makes that
    // slot a pointer, and the request's state lives only while it is answered.
    let service = service_fn(move |mut req: Request<hyper::body::Incoming>| {
        if let Some(outbox) = &outbox
            && req.version() <= hyper::Version::HTTP_11
        {
            req.extensions_mut().insert(outbox.clone());
        }
        let in_flight = tracked.start();
        let state = state.clone();
        Box::pin(async move {
            // Logs a 499 if the client goes away before the answer is ready (this future is then dropped).
            let pending = state.access_log.begin(peer, &req);
            let resp = server::handle(state, peer, req).await.map(|r| pending.respond(r));
            resp.map(|r| r.map(|body| Tracked::new(body, in_flight).boxed_unsync()))
        })
    });
    let conn = watcher.watch(builder.serve_connection(TokioIo::new(io), service).into_owned());
    tokio::select! {
        ended = conn => {
            if let Err(e) = ended {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        }
        // Dropping the connection closes it.
        () = activity.idle(idle_timeout) => tracing::debug!(%peer, "idle connection closed"),
    }
}

/// Refuses a keyring file inside the storage root (after links): it would be served as an object.
fn check_keyring_outside(keyring: &std::path::Path, root: &std::path::Path) -> Result<(), StartError> {
    let roots = [root.canonicalize().ok(), std::path::absolute(root).ok()];
    // The file may not exist yet (the agent waits for it); its folder decides where it will be.
    let resolved = keyring.canonicalize().ok().or_else(|| {
        let parent = keyring.parent()?.canonicalize().ok()?;
        Some(parent.join(keyring.file_name()?))
    });
    let files = [resolved, std::path::absolute(keyring).ok()];
    let inside = files.iter().flatten().any(|f| roots.iter().flatten().any(|r| f.starts_with(r)));
    if inside {
        let (keyring, root) = (keyring.display().to_string(), root.display().to_string());
        return Err(StartError::KeyringInsideStorage { keyring, root });
    }
    Ok(())
}

/// Connections the admin port holds at once: Prometheus, probes and a person with curl.
const ADMIN_CONNECTIONS: usize = 64;

async fn serve_admin(listener: TcpListener, state: Arc<State>, draining: Arc<AtomicBool>) {
    let listener = Listener::new(listener, ADMIN_CONNECTIONS, "admin");
    let mut http = hyper::server::conn::http1::Builder::new();
    // One request per connection: nobody can park idle keep-alive connections on the port the probes need.
    http.timer(TokioTimer::new())
        .header_read_timeout(state.config.header_timeout)
        .max_buf_size(16 * 1024)
        .keep_alive(false);
    loop {
        let (stream, _, slot) = listener.accept().await;
        let state = state.clone();
        let draining = draining.clone();
        let http = http.clone();
        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
            let state = state.clone();
            let draining = draining.clone();
            async move { Ok::<_, std::convert::Infallible>(admin(&state, &draining, req.uri().path()).await) }
        });
        tokio::spawn(async move {
            let _slot = slot;
            if !connections::first_byte(&stream, Duration::from_secs(10)).await {
                return;
            }
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn admin(state: &State, draining: &AtomicBool, path: &str) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/metrics" => {
            state.metrics.storage_stuck_calls.set(state.storage.pool().stuck() as i64);
            (StatusCode::OK, state.metrics.encode())
        }
        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => {
            if draining.load(Ordering::Relaxed) {
                (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".to_owned())
            } else if state.auth.verifier().is_none() {
                (StatusCode::SERVICE_UNAVAILABLE, "no keyring loaded\n".to_owned())
            } else if let Some(why) = stuck_storage(&state.storage) {
                (StatusCode::SERVICE_UNAVAILABLE, why)
            } else if let Err(e) = state.storage.ping().await {
                (StatusCode::SERVICE_UNAVAILABLE, format!("storage: {e}\n"))
            } else {
                (StatusCode::OK, "ready\n".to_owned())
            }
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// Why the agent is not ready when more than half its storage threads are stuck past the storage timeout: most
/// requests here would wait and fail, so balancers should send them elsewhere until the calls return.
fn stuck_storage(storage: &Storage) -> Option<String> {
    let (stuck, of) = (storage.pool().stuck(), storage.pool().size());
    (stuck * 2 > of).then(|| {
        format!(
            "storage: {stuck} of {of} storage threads are stuck in calls past --storage-timeout (a hung file \
             system?); ready again once they return\n"
        )
    })
}

/// For tests and embedding: collects a small body (never used on video bodies).
pub async fn collect_small(body: server::Body) -> Result<Bytes, std::io::Error> {
    Ok(body.collect().await?.to_bytes())
}
