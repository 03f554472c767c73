//! Local file ranges sent with `sendfile(2)`: the bytes go from the page cache to the socket inside the kernel and
//! never through the agent's memory, as nginx's `sendfile on` (`--sendfile`).
//!
//! hyper writes every body byte itself, so a body cannot simply be a file. A body chunk is a *stand-in* instead:
//! a slice of [`STAND_IN`], a static array that is never written, as long as the file range it stands for, while
//! the connection's [`Outbox`] holds the file and offset behind it, in order. hyper's writes all reach the socket
//! through [`SendfileStream`]: plain bytes (the head) go out as they are, and a stand-in is replaced by `sendfile`
//! from its file. hyper's HTTP/1 writer queues body chunks and hands them to a vectored write without copying them
//! (the connection is built with `writev(true)`), so a stand-in's address reaches the socket as it was made. The
//! socket checks that each stand-in is exactly the unsent rest of the next file range, and fails the connection
//! otherwise: the array's zeros never go out in place of the file.
//!
//! Only cleartext HTTP/1 takes this path: TLS has to read every byte to encrypt it, and HTTP/2 frames them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::local::Pool;
use crate::metrics::Metrics;
use crate::storage::StorageError;

/// The longest stand-in, so the most one body chunk sends. Never written, so it takes no memory (a zero page
/// at most, if something ever read it).
static STAND_IN: [u8; CHUNK] = [0; CHUNK];
const CHUNK: usize = 1024 * 1024;

/// More file ranges waiting than hyper ever queues (it holds about one 1 MiB chunk before it writes): the stand-ins
/// are not reaching the socket, so the body fails rather than pile them up.
const MAX_WAITING: usize = 4;

/// The ranges a connection's body has handed to hyper as stand-ins and the socket has not sent yet, oldest first.
#[derive(Clone, Debug, Default)]
pub struct Outbox(Arc<Mutex<VecDeque<Pending>>>);

#[derive(Debug)]
struct Pending {
    file: Arc<File>,
    offset: u64,
    len: usize,
    sent: usize,
}

impl Outbox {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        // A panic while holding the lock cannot leave the queue half-changed (each change is one push or pop).
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn stand_in_offset(buf: &[u8]) -> Option<usize> {
    let start = STAND_IN.as_ptr() as usize;
    let at = buf.as_ptr() as usize;
    (!buf.is_empty() && at >= start && at < start + CHUNK).then(|| at - start)
}

/// `range` of an open local file as a body of stand-ins for the connection's socket to `sendfile`. A chunk not all
/// in the page cache is first read in on the storage pool (under the storage timeout), so `sendfile` on the worker
/// finds it there rather than waiting on a disk, or on a network file system that hangs. The first chunk is read
/// before this returns, so storage that fails or hangs is an error status, not a cut answer.
pub async fn file_body(
    pool: Pool,
    outbox: Outbox,
    file: File,
    range: Range<u64>,
    metrics: Arc<Metrics>,
) -> Result<BoxStream<'static, Result<Bytes, StorageError>>, StorageError> {
    let file = Arc::new(file);
    let end = range.end;
    let first = (end - range.start).min(CHUNK as u64) as usize;
    bring_in(&pool, &file, range.start, first).await?;
    let stream = futures::stream::try_unfold((range.start, true), move |(offset, loaded)| {
        let (pool, outbox, file, metrics) = (pool.clone(), outbox.clone(), file.clone(), metrics.clone());
        async move {
            if offset >= end {
                return Ok(None);
            }
            let len = (end - offset).min(CHUNK as u64) as usize;
            if !loaded {
                bring_in(&pool, &file, offset, len).await?;
            }
            let mut queue = outbox.queue();
            if queue.len() >= MAX_WAITING {
                return Err(StorageError::Unavailable("sendfile: the body's earlier ranges were never sent".into()));
            }
            queue.push_back(Pending { file, offset, len, sent: 0 });
            metrics.sendfile_bytes.inc_by(len as u64);
            Ok(Some((Bytes::from_static(&STAND_IN[..len]), (offset + len as u64, false))))
        }
    });
    Ok(stream.boxed())
}

/// Makes sure the pages of the range are in the page cache: at once if they are, or else on the storage pool.
async fn bring_in(pool: &Pool, file: &Arc<File>, offset: u64, len: usize) -> Result<(), StorageError> {
    if resident(file, offset, len) {
        return Ok(());
    }
    let file = file.clone();
    pool.run(move || load(&file, offset, len)).await
}

/// Whether every page of the range is in the page cache now (`cachestat(2)`, Linux 6.5 and later; no library wraps
/// it yet), so that `sendfile` will find it there: the usual case for hot video, and a trip to the storage pool
/// saved. `false` when the kernel cannot tell.
fn resident(file: &File, offset: u64, len: usize) -> bool {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    #[repr(C)]
    struct CachestatRange {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Cachestat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451; // the same on every architecture
    static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
    if len == 0 || UNSUPPORTED.load(Ordering::Relaxed) {
        return false;
    }
    let page = rustix::param::page_size() as u64;
    let (first, last) = (offset / page, (offset + len as u64 - 1) / page);
    let range = CachestatRange { off: first * page, len: (last - first + 1) * page };
    let mut stat = Cachestat::default();
    // SAFETY: the kernel reads `range` and writes `stat`, both live `repr(C)` structs of the layout it expects.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0u32,
        )
    };
    if r != 0 {
        if io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
            UNSUPPORTED.store(true, Ordering::Relaxed);
        }
        return false;
    }
    stat.nr_cache > last - first
}

/// Reads the pages of `offset..offset + len` into the page cache and waits until they are there, copying nothing:
/// the range is mapped (private, read-only) with `MAP_POPULATE`, which faults every page in, then unmapped unread. (`readahead(2)` only
/// starts the reads: `sendfile` on the worker would then wait for them.)
fn load(file: &File, offset: u64, len: usize) -> Result<(), StorageError> {
    // SAFETY: the mapping is never read or written, so a file changed or cut short meanwhile cannot fault.
    let map = unsafe { memmap2::MmapOptions::new().offset(offset).len(len).populate().map_copy_read_only(file) };
    map.map(drop).map_err(|e| StorageError::Unavailable(format!("reading a local file: {e}")))
}

/// A cleartext TCP connection whose writes send file ranges for the stand-ins in them (see the module).
pub struct SendfileStream {
    tcp: TcpStream,
    outbox: Outbox,
}

impl SendfileStream {
    pub fn new(tcp: TcpStream) -> (SendfileStream, Outbox) {
        let outbox = Outbox::default();
        (SendfileStream { tcp, outbox: outbox.clone() }, outbox)
    }

    /// Sends the file range behind a stand-in, as much as the socket takes now.
    fn poll_send_file(&mut self, cx: &mut Context<'_>, buf: &[u8], at: usize) -> Poll<io::Result<usize>> {
        let mut queue = self.outbox.queue();
        let Some(next) = queue.front_mut() else {
            return Poll::Ready(Err(io::Error::other("sendfile: a stand-in with no file range behind it")));
        };
        if at != next.sent || buf.len() != next.len - next.sent {
            return Poll::Ready(Err(io::Error::other("sendfile: a stand-in out of order with its file range")));
        }
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let mut offset = next.offset + next.sent as u64;
            let file = &next.file;
            let sent = self.tcp.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(&self.tcp, &**file, Some(&mut offset), buf.len()).map_err(io::Error::from)
            });
            match sent {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "sendfile: the file is shorter than when it was opened",
                    )));
                }
                Ok(n) => {
                    next.sent += n;
                    if next.sent == next.len {
                        queue.pop_front();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Plain bytes never go out between the parts of one file range.
    fn check_plain(&self) -> io::Result<()> {
        match self.outbox.queue().front() {
            Some(next) if next.sent > 0 => Err(io::Error::other("sendfile: a write cut into a file range")),
            _ => Ok(()),
        }
    }
}

impl AsyncRead for SendfileStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(at) = stand_in_offset(buf) {
            return self.poll_send_file(cx, buf, at);
        }
        self.check_plain()?;
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().position(|b| stand_in_offset(b).is_some());
        match first {
            Some(0) => {
                let at = stand_in_offset(&bufs[0]).unwrap_or_default();
                self.poll_send_file(cx, &bufs[0], at)
            }
            // The plain bytes before the stand-in first (a response's head): the file range follows in the next
            // write, which hyper makes at once.
            Some(k) => {
                self.check_plain()?;
                Pin::new(&mut self.tcp).poll_write_vectored(cx, &bufs[..k])
            }
            None => {
                self.check_plain()?;
                Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (SendfileStream, Outbox, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (stream, outbox) = SendfileStream::new(server);
        (stream, outbox, client)
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        f
    }

    #[tokio::test]
    async fn a_stand_in_goes_out_as_its_file_range_after_the_plain_bytes_before_it() {
        let (mut stream, outbox, mut client) = pair().await;
        let file: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        outbox.queue().push_back(Pending { file: Arc::new(file_with(&file)), offset: 1000, len: 5000, sent: 0 });
        let stand_in = &STAND_IN[..5000];
        let bufs = [IoSlice::new(b"head\r\n"), IoSlice::new(stand_in)];
        // The head goes out alone, then the file range in as many writes as the socket takes, each given the
        // unsent rest of the stand-in, as hyper does.
        assert_eq!(stream.write_vectored(&bufs).await.unwrap(), 6);
        let mut sent = 0;
        while sent < stand_in.len() {
            sent += stream.write_vectored(&[IoSlice::new(&stand_in[sent..])]).await.unwrap();
        }
        assert!(outbox.queue().is_empty(), "a range fully sent leaves the outbox");
        let mut got = vec![0u8; 6 + 5000];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..6], b"head\r\n");
        assert!(got[6..] == file[1000..6000], "the file's bytes, not the stand-in's zeros");
    }

    #[tokio::test]
    async fn a_stand_in_with_no_file_range_or_out_of_order_fails_instead_of_sending_zeros() {
        let (mut stream, outbox, mut client) = pair().await;
        let e = stream.write(&STAND_IN[..100]).await.unwrap_err();
        assert!(e.to_string().contains("no file range"), "{e}");

        outbox.queue().push_back(Pending { file: Arc::new(file_with(&[7; 300])), offset: 0, len: 300, sent: 0 });
        // Not the start of the range: something skipped or reordered bytes.
        let e = stream.write(&STAND_IN[10..300]).await.unwrap_err();
        assert!(e.to_string().contains("out of order"), "{e}");
        // Longer than the range.
        let e = stream.write(&STAND_IN[..301]).await.unwrap_err();
        assert!(e.to_string().contains("out of order"), "{e}");

        // Half the range sent, then plain bytes: they would land inside the body.
        assert_eq!(stream.write(&STAND_IN[..300]).await.unwrap(), 300);
        outbox.queue().push_back(Pending { file: Arc::new(file_with(&[7; 300])), offset: 0, len: 300, sent: 150 });
        let e = stream.write(b"plain").await.unwrap_err();
        assert!(e.to_string().contains("cut into"), "{e}");

        drop(stream);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, vec![7u8; 300], "only the file's bytes ever went out");
    }

    #[test]
    fn a_range_is_resident_once_read_and_not_after_the_kernel_drops_it() {
        let f = file_with(&vec![1u8; 1 << 20]);
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        assert!(!resident(&f, 0, 1 << 20), "pages dropped from the page cache");
        load(&f, 4096 + 10, 100_000).unwrap();
        if kernel_at_least(6, 5) {
            assert!(resident(&f, 4096 + 10, 100_000), "cachestat sees the pages just loaded");
        } else {
            assert!(!resident(&f, 4096 + 10, 100_000), "without cachestat, never taken as resident");
        }
    }

    fn kernel_at_least(major: u32, minor: u32) -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
    }

    #[test]
    fn only_the_stand_in_array_is_a_stand_in() {
        assert_eq!(stand_in_offset(&STAND_IN[5..9]), Some(5));
        assert_eq!(stand_in_offset(&STAND_IN[..0]), None);
        assert_eq!(stand_in_offset(&[0u8; 16]), None);
        assert_eq!(stand_in_offset(b"head"), None);
    }
}
