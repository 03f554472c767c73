//! A local directory as storage, confined beneath its root.
//!
//! Every object is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` relative to the root, so a
//! symbolic link may point elsewhere inside the root but never out of it (an absolute link or a climb fails), and
//! `/proc` magic links never resolve. A hard link cannot be told from the file it shares an inode with, so a file
//! with more than one link is refused. Only regular files are served: FIFOs, devices and sockets are opened
//! non-blocking and answered as absent, so no open ever waits on them.
//!
//! Every blocking call (open, stat, read) runs on a bounded [`Pool`]. A call stuck in the kernel (a hung network
//! file system) cannot be cancelled: it keeps its thread and its place in the pool until the kernel returns, so
//! stuck calls are counted rather than multiplied, and once the pool is all stuck, new calls are refused at once.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::storage::{Meta, StorageError};

/// The root directory, held open: renaming or replacing the path later does not move what is served.
#[derive(Clone, Debug)]
pub struct LocalDir {
    root: Arc<OwnedFd>,
}

impl LocalDir {
    pub fn open(dir: &Path) -> Result<LocalDir, StorageError> {
        let root = rustix::fs::open(dir, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| StorageError::Unavailable(format!("cannot open {}: {e}", dir.display())))?;
        Ok(LocalDir { root: Arc::new(root) })
    }

    /// Whether the root is still there.
    pub fn ping(&self) -> Result<(), StorageError> {
        rustix::fs::fstat(self.root.as_fd()).map(|_| ()).map_err(|e| StorageError::Unavailable(e.to_string()))
    }

    /// Opens `object` (a canonical path: no empty, `.` or `..` segments) beneath the root, as a regular file with
    /// one link, and returns it with its metadata. Blocking: call it off the runtime.
    pub fn open_object(&self, object: &str) -> Result<(File, Meta), StorageError> {
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        let fd = loop {
            match rustix::fs::openat2(self.root.as_fd(), object, flags, Mode::empty(), resolve) {
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::NOSYS) => break self.open_walk(object, flags)?,
                other => break other.map_err(refused)?,
            }
        };
        let file = File::from(fd);
        let md = file.metadata().map_err(|e| StorageError::Unavailable(format!("stat: {e}")))?;
        if !md.file_type().is_file() {
            return Err(StorageError::NotFound);
        }
        if md.nlink() > 1 {
            tracing::warn!(object, links = md.nlink(), "not serving a hard-linked file (see docs/security.md)");
            return Err(StorageError::NotFound);
        }
        let modified = md.modified().unwrap_or(UNIX_EPOCH);
        let micros = modified.duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
        // Inode, modification time and size: a replaced or rewritten file gets a new ETag.
        let etag = format!("{:x}-{micros:x}-{:x}", md.ino(), md.size());
        Ok((file, Meta::new(md.size(), Some(etag), modified)))
    }

    /// Kernels without `openat2` (before 5.6): one component at a time, following no link at all.
    fn open_walk(&self, object: &str, flags: OFlags) -> Result<OwnedFd, StorageError> {
        let (dirs, name) = object.rsplit_once('/').unwrap_or(("", object));
        let mut dir: Option<OwnedFd> = None;
        for part in dirs.split('/').filter(|p| !p.is_empty()) {
            let at = dir.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
            let dflags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            dir = Some(rustix::fs::openat(at, part, dflags, Mode::empty()).map_err(refused)?);
        }
        let at = dir.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
        rustix::fs::openat(at, name, flags | OFlags::NOFOLLOW, Mode::empty()).map_err(refused)
    }
}

/// Missing, outside the root, a link loop or not a directory on the way: all the same to a client.
fn refused(e: rustix::io::Errno) -> StorageError {
    use rustix::io::Errno;
    match e {
        Errno::NOENT | Errno::XDEV | Errno::LOOP | Errno::NOTDIR | Errno::NAMETOOLONG | Errno::ACCESS => {
            StorageError::NotFound
        }
        e => StorageError::Unavailable(format!("open: {e}")),
    }
}

/// Whether `sendfile` may send from `file`: only where reads go through the page cache, so that pages brought in on
/// the storage pool are what `sendfile` finds on the worker. FUSE is excluded: a FUSE file system may serve reads
/// directly (`FOPEN_DIRECT_IO`), past the page cache, and each `sendfile` would then wait on it in the worker.
pub fn sendfile_safe(file: &File) -> bool {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    // `f_type` is an i64 on x86_64 but not on every architecture.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::fstatfs(file).is_ok_and(|fs| fs.f_type as i64 != FUSE_SUPER_MAGIC)
}

/// Bytes read from a local file per blocking read, unless the reader asks for smaller chunks.
pub const FILE_CHUNK: usize = 256 * 1024;

/// Reads `range` of an open file as a stream of chunks of `chunk` bytes, one positioned read per chunk on the
/// storage pool.
pub fn file_stream(
    pool: Pool,
    file: File,
    range: Range<u64>,
    chunk: usize,
) -> BoxStream<'static, Result<Bytes, StorageError>> {
    let chunk = chunk.max(4096);
    // Each chunk is one positioned read straight into the buffer that becomes the body chunk: no seek, and no
    // copy through an intermediate buffer (tokio::fs::File reads into its own buffer, then copies; callgrind
    // showed that copy as most of the agent's instructions per MiB).
    let file = Arc::new(file);
    let end = range.end;
    futures::stream::try_unfold(range.start, move |pos| {
        let (file, pool) = (file.clone(), pool.clone());
        async move {
            if pos >= end {
                return Ok(None);
            }
            let len = (end - pos).min(chunk as u64) as usize;
            let read = move || {
                pread_exact(&file, pos, len)
                    .map_err(|e| StorageError::Unavailable(format!("reading a local file: {e}")))
            };
            let chunk = pool.run(read).await?;
            Ok(Some((chunk, pos + len as u64)))
        }
    })
    .boxed()
}

/// Reads `len` bytes at `pos` into a fresh buffer without first zeroing it (zeroing showed as the next hot spot
/// once the copy was gone).
fn pread_exact(file: &File, pos: u64, len: usize) -> io::Result<Bytes> {
    use std::os::fd::AsRawFd;
    let mut buf = bytes::BytesMut::with_capacity(len);
    while buf.len() < len {
        let filled = buf.len();
        let at = libc::off_t::try_from(pos + filled as u64).map_err(io::Error::other)?;
        let spare = buf.spare_capacity_mut();
        let want = (len - filled).min(spare.len());
        // SAFETY: the kernel writes at most `want` bytes into the spare capacity, which is valid for writes of
        // that many bytes; only the bytes it reports written are then marked initialised.
        let n = unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), want, at) };
        match n {
            // SAFETY: the kernel initialised exactly `n` bytes after the filled part.
            n if n > 0 => unsafe { buf.set_len(filled + n as usize) },
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(buf.freeze())
}

/// The blocking storage calls allowed at once (`--max-storage-threads`), each bounded by the storage timeout.
#[derive(Clone, Debug)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    permits: Arc<Semaphore>,
    size: usize,
    timeout: Duration,
    /// When each running call started, by call number: at most `size` entries.
    running: Mutex<Running>,
}

#[derive(Debug, Default)]
struct Running {
    next: u64,
    started: HashMap<u64, Instant>,
}

/// One call on a thread: its place in the pool and its entry among the running calls, both given back only when
/// the thread returns (or the call is dropped unstarted), whoever stopped waiting for it.
struct Call {
    pool: Arc<PoolInner>,
    id: u64,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Call {
    fn drop(&mut self) {
        self.pool.running().started.remove(&self.id);
    }
}

impl PoolInner {
    /// A panic elsewhere while the lock was held leaves the map consistent (every update is one insert or remove).
    fn running(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stuck(&self) -> usize {
        let now = Instant::now();
        self.running().started.values().filter(|t| now.duration_since(**t) >= self.timeout).count()
    }
}

impl Pool {
    /// `size` calls at once (at least one), each given `timeout`.
    pub fn new(size: usize, timeout: Duration) -> Pool {
        let size = size.max(1);
        let permits = Arc::new(Semaphore::new(size));
        Pool { inner: Arc::new(PoolInner { permits, size, timeout, running: Mutex::default() }) }
    }

    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// Calls still running past the timeout: threads stuck in the kernel, which nothing can cancel.
    pub fn stuck(&self) -> usize {
        self.inner.stuck()
    }

    /// Runs `f` on a blocking thread. Waits for a free place in the pool, unless every place is held by a stuck
    /// call: then waiting would only pile up requests behind a file system that does not answer, so it fails at
    /// once with [`StorageError::Stuck`]. The wait and the call together get the timeout.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + inner.timeout;
        let stuck = || StorageError::Stuck { stuck: inner.stuck(), of: inner.size };
        let permit = match inner.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) if inner.stuck() >= inner.size => return Err(stuck()),
            Err(_) => match tokio::time::timeout_at(deadline, inner.permits.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                // The semaphore is never closed.
                Ok(Err(_)) => return Err(StorageError::Unavailable("the storage pool is closed".into())),
                Err(_) if inner.stuck() >= inner.size => return Err(stuck()),
                Err(_) => return Err(StorageError::Timeout(inner.timeout)),
            },
        };
        let call = {
            let mut running = inner.running();
            let id = running.next;
            running.next += 1;
            running.started.insert(id, Instant::now());
            Call { pool: inner.clone(), id, _permit: permit }
        };
        let task = tokio::task::spawn_blocking(move || {
            let _call = call;
            f()
        });
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(StorageError::Unavailable(format!("storage task failed: {e}"))),
            Err(_) => Err(StorageError::Timeout(inner.timeout)),
        }
    }
}
