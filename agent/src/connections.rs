//! Bounds on connections: how many are open at once, how long a client may stay silent before its first byte, how
//! long a keep-alive connection may idle between requests, and accept errors that back off instead of spinning.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::server::Body;

/// A listener that holds at most `cap` connections open.
pub struct Listener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    cap: usize,
    name: &'static str,
}

impl Listener {
    pub fn new(inner: TcpListener, cap: usize, name: &'static str) -> Listener {
        Listener::sharing(inner, Arc::new(Semaphore::new(cap)), cap, name)
    }

    /// A listener whose `cap` slots are shared with others (one per worker thread on the same socket).
    pub fn sharing(inner: TcpListener, slots: Arc<Semaphore>, cap: usize, name: &'static str) -> Listener {
        Listener { inner, slots, cap, name }
    }

    /// Waits for a free slot, then for a connection; the slot is released when the returned permit drops. At the
    /// cap no accept is attempted (new clients wait in the kernel's backlog), and the pause is logged once when it
    /// starts and once when it ends. Accept errors (out of file handles) back off up to a second, logged once per
    /// episode, never once per attempt.
    pub async fn accept(&self) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                tracing::warn!(listener = self.name, cap = self.cap, "connection cap reached; accepting paused");
                let slot = self.slots.clone().acquire_owned().await.expect("the semaphore is never closed");
                tracing::info!(listener = self.name, "below the connection cap; accepting again");
                slot
            }
        };
        let mut backoff = Duration::from_millis(5);
        let mut failing = false;
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    if failing {
                        tracing::info!(listener = self.name, "accepting again");
                    }
                    return (stream, peer, slot);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(listener = self.name, error = %e, "accept failing; backing off");
                        failing = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Waits for the client's first byte, before protocol detection (where hyper's header timeout does not yet run).
/// `false` if it sends none within `timeout`, or closes.
pub async fn first_byte(stream: &TcpStream, timeout: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(timeout, stream.peek(&mut byte)).await, Ok(Ok(n)) if n > 0)
}

/// What a connection's requests are doing, for the idle timeout: a connection with no request in flight (its
/// response body included) for the timeout is closed, HTTP/1.1 keep-alive and HTTP/2 alike.
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `epoch` when the last request ended (or the connection opened).
    last: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity { epoch: Instant::now(), in_flight: AtomicUsize::new(0), last: AtomicU64::new(0) })
    }

    /// Marks a request in flight until the guard, which travels with its response body, drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// How long the connection has had nothing in flight; zero while something is.
    pub fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Resolves once the connection has idled for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let idle = self.idle_for();
            if idle >= timeout {
                return;
            }
            tokio::time::sleep((timeout - idle).max(Duration::from_millis(50))).await;
        }
    }
}

/// One request in flight on a connection.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.epoch.elapsed().as_millis() as u64;
        self.0.last.store(now, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in flight until hyper has sent it, or the client left.
pub struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl Tracked {
    pub fn new(body: Body, in_flight: InFlight) -> Tracked {
        Tracked { body, _in_flight: in_flight }
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Unsent bytes the kernel may queue on a connection beyond what is in flight.
const UNSENT_LOW_WATER: libc::c_int = 128 * 1024;

/// Keeps the kernel from queueing megabytes of unsent data per connection (the send buffer autotunes to 4 MiB):
/// the socket reads as writable only while little is waiting, so a slow client is seen as slow when the answer is
/// paced (read-ahead goes only to readers that keep up) and a stalled one holds kilobytes of kernel memory, not
/// megabytes. Best effort: a kernel without `TCP_NOTSENT_LOWAT` keeps its default.
pub fn limit_unsent(stream: &tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let value = UNSENT_LOW_WATER;
    // SAFETY: a valid socket descriptor, and a c_int option value of the size given.
    let _ = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}
