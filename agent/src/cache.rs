//! A cache of fixed-size, aligned slices of objects, so a popular video is read from storage once, not once per
//! viewer. Slices are keyed by object and ETag: a changed object has a new ETag, so its old slices are never
//! served once its new metadata is known (see `metadata.rs`). The cache is bounded in bytes; concurrent requests
//! for one missing slice share one storage read.
//!
//! Memory is bounded as a whole, not only the cache's share: every slice (and every chunk streamed past the cache)
//! holds permits of one semaphore for its length for as long as anything holds its bytes, the cache or a stream
//! that is still sending a slice the cache has since dropped. The semaphore has the cache's capacity plus the
//! streams' budget, so slice memory never exceeds their sum (and eight spare slice buffers kept for the next
//! loads), whatever the mix of slow readers; a read that cannot get memory within the storage timeout is refused
//! with 503 (or, mid-answer, ends the answer).
//!
//! Whole slices go to readers that give them back soon. A slow reader would hold a slice for as long as it takes
//! to send (16 s for 1 MiB at 64 KiB/s), so it is sent cached slices and, for the rest, small chunks streamed past
//! the cache: a thousand slow viewers of a thousand different videos hold about 96 KiB each, not one or two MiB.
//! A reader that keeps up gets the next slice read ahead on its own task.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use moka::future::Cache;
use moka::notification::RemovalCause;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::AbortOnDropHandle;

use crate::disk::DiskCache;
use crate::metrics::Metrics;
use crate::storage::{Body, Storage, StorageError};

/// A slice of one version of an object: the key of the memory cache and of the disk tier.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct SliceKey {
    pub(crate) object: Arc<str>,
    pub(crate) etag: Arc<str>,
    pub(crate) index: u64,
}

/// The memory tier: slices by key, hashed with foldhash (seeded per process) rather than SipHash.
type Slices = Cache<SliceKey, Slice, foldhash::fast::RandomState>;

/// One slice and the content type storage reported with it.
#[derive(Clone)]
struct Slice {
    bytes: Bytes,
    content_type: Option<Arc<str>>,
    /// Loaded from the disk tier rather than storage.
    from_disk: bool,
}

/// Whether an answer came from the cache, for the `X-Cache` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The answer's first slices (up to `HIT_CHECK`, so a seek into a long film costs a few lookups, not one
    /// per slice to its end) were cached when the request arrived.
    Hit,
    /// The first slices were in memory or on disk (`--disk-cache-dir`), at least one on disk, and the first was
    /// read from there (`X-Cache: HIT`: storage was not asked).
    Disk,
    /// At least one slice was loaded from storage.
    Miss,
    /// The first slice was streamed from storage past the cache in small chunks, because memory for a whole slice
    /// was in use (`X-Cache: MISS`).
    Streamed,
    /// Not cacheable (no ETag, or cache off or smaller than a slice): streamed straight from storage.
    Bypass,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Hit | Status::Disk => "HIT",
            Status::Miss | Status::Streamed => "MISS",
            Status::Bypass => "BYPASS",
        }
    }

    /// The `cache` label of the metrics and the access log.
    pub fn label(self) -> &'static str {
        match self {
            Status::Hit => "hit",
            Status::Disk => "disk",
            Status::Miss => "miss",
            Status::Streamed => "streamed",
            Status::Bypass => "bypass",
        }
    }
}

/// How many of an answer's first slices `X-Cache: HIT` speaks for.
const HIT_CHECK: u64 = 16;

pub struct SliceCache {
    slices: Option<Slices>,
    slice_size: u64,
    capacity: u64,
    memory: Memory,
    disk: Option<DiskCache>,
    metrics: Arc<Metrics>,
}

/// The bytes slices and streamed chunks may hold at once, and how long a read waits for some.
#[derive(Clone)]
struct Memory {
    permits: Arc<Semaphore>,
    total: usize,
    wait: std::time::Duration,
    spares: Arc<Spares>,
    metrics: Arc<Metrics>,
}

/// Bytes that give their permits back when the last holder drops them.
struct Held {
    bytes: Bytes,
    permit: Option<OwnedSemaphorePermit>,
    /// The bytes are a buffer of our own (not a mapped file), to offer to the next load.
    recycle: bool,
    memory: Memory,
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.permit.take());
        if self.recycle
            && let Ok(buffer) = std::mem::take(&mut self.bytes).try_into_mut()
        {
            self.memory.spares.put(buffer);
        }
        self.memory.report();
    }
}

/// Slice buffers given back by slices nothing holds any more, for the next slices read from storage. A fresh
/// buffer faults in a page for every 4 KiB it is filled with: in the catalogue benchmark, 7% of the agent's CPU
/// went to page faults under the copy into new slice buffers. At most [`SPARES`] of them, beside the budget.
struct Spares {
    /// The size of a whole slice: only buffers of exactly this capacity are kept.
    size: usize,
    free: std::sync::Mutex<Vec<BytesMut>>,
}

/// Spare slice buffers kept at most (8 MiB at 1 MiB slices).
const SPARES: usize = 8;

impl Spares {
    /// A buffer for `len` bytes: a spare one when `len` is a whole slice and one is free.
    fn take(&self, len: usize) -> BytesMut {
        if len == self.size
            && let Some(buffer) = self.free.lock().ok().and_then(|mut free| free.pop())
        {
            return buffer;
        }
        BytesMut::with_capacity(len)
    }

    fn put(&self, mut buffer: BytesMut) {
        if buffer.capacity() != self.size {
            return;
        }
        buffer.clear();
        if let Ok(mut free) = self.free.lock()
            && free.len() < SPARES
        {
            free.push(buffer);
        }
    }
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Memory {
    /// Reserves `len` bytes, waiting up to the storage timeout for other streams to give some back.
    async fn reserve(&self, len: usize) -> Result<OwnedSemaphorePermit, StorageError> {
        let n = u32::try_from(len).unwrap_or(u32::MAX);
        match tokio::time::timeout(self.wait, self.permits.clone().acquire_many_owned(n)).await {
            Ok(Ok(permit)) => {
                self.report();
                Ok(permit)
            }
            _ => {
                self.metrics.memory_waits_failed.inc();
                Err(StorageError::Busy)
            }
        }
    }

    /// The memory kept free when a slice is taken for read-ahead, or for a reader whose pace is not known yet: a
    /// quarter of the whole, so streams that must go on in small chunks always find some.
    fn spare(&self) -> usize {
        self.total / 4
    }

    /// `len` bytes now, leaving at least `spare` free, or nothing.
    fn try_reserve(&self, len: usize, spare: usize) -> Option<OwnedSemaphorePermit> {
        if self.permits.available_permits() < len.saturating_add(spare) {
            return None;
        }
        let permit = self.permits.clone().try_acquire_many_owned(u32::try_from(len).ok()?).ok()?;
        self.report();
        Some(permit)
    }

    /// `bytes`, charged to the budget (by `permit`) until every copy of the returned handle is gone.
    fn wrap(&self, bytes: Bytes, permit: OwnedSemaphorePermit) -> Bytes {
        Bytes::from_owner(Held { bytes, permit: Some(permit), recycle: false, memory: self.clone() })
    }

    /// A slice read into `buffer` (from [`Spares::take`]), charged like [`Memory::wrap`]; when the last copy is
    /// gone the buffer goes to [`Spares::put`], which keeps it if it is a whole slice's.
    fn wrap_buffer(&self, buffer: BytesMut, permit: OwnedSemaphorePermit) -> Bytes {
        Bytes::from_owner(Held { bytes: buffer.freeze(), permit: Some(permit), recycle: true, memory: self.clone() })
    }

    async fn hold(&self, bytes: Bytes) -> Result<Bytes, StorageError> {
        let permit = self.reserve(bytes.len()).await?;
        Ok(self.wrap(bytes, permit))
    }

    fn report(&self) {
        let held = self.total.saturating_sub(self.permits.available_permits());
        self.metrics.slice_memory_bytes.set(held as i64);
    }
}

impl SliceCache {
    /// `capacity` bytes of slices of `slice_size` bytes (a capacity of 0 turns the cache off), and `budget` bytes
    /// more for what streams hold beyond the cache; a read waits up to `wait` for memory. `disk`, if any, is the
    /// tier under the memory cache (used only with the memory cache on).
    /// Whether every read goes straight to storage (`--cache-size-mib 0`, or less than one slice).
    pub fn is_off(&self) -> bool {
        self.slices.is_none()
    }

    pub fn new(
        capacity: u64,
        slice_size: u64,
        budget: u64,
        wait: std::time::Duration,
        disk: Option<DiskCache>,
        metrics: Arc<Metrics>,
    ) -> SliceCache {
        let slices = (capacity > 0).then(|| {
            let evictions = metrics.cache_evictions.clone();
            Cache::builder()
                .max_capacity(capacity)
                .weigher(|_: &SliceKey, s: &Slice| u32::try_from(s.bytes.len()).unwrap_or(u32::MAX))
                .eviction_listener(move |_, _, cause| {
                    if cause == RemovalCause::Size {
                        evictions.inc();
                    }
                })
                .build_with_hasher(foldhash::fast::RandomState::default())
        });
        let slice_size = slice_size.max(4096);
        // At least two slices beyond the cache, so one stream can always make progress.
        let total = capacity.saturating_add(budget.max(2 * slice_size));
        let total = usize::try_from(total).unwrap_or(Semaphore::MAX_PERMITS).min(Semaphore::MAX_PERMITS);
        let permits = Arc::new(Semaphore::new(total));
        let spares = Arc::new(Spares { size: slice_size as usize, free: std::sync::Mutex::default() });
        let memory = Memory { permits, total, wait, spares, metrics: metrics.clone() };
        SliceCache { slices, slice_size, capacity, memory, disk, metrics }
    }

    /// The bytes of `range` of an object of `size` bytes, from cached slices where possible. The first piece is
    /// ready before this returns (so storage errors, and memory in use, become a status code); the rest stream as
    /// the client reads. A stream holds one slice, and a second (read ahead) only while its reader keeps up; when
    /// memory for a whole slice is in use, a slice is streamed past the cache in small chunks instead, so many
    /// slow readers of different videos each hold a chunk, not a slice.
    pub async fn read(
        &self,
        storage: &Storage,
        object: &str,
        etag: Option<&str>,
        size: u64,
        range: Range<u64>,
    ) -> Result<(Body, Status), StorageError> {
        let (Some(slices), Some(etag)) = (&self.slices, etag) else {
            return self.bypass(storage, object, etag, range).await;
        };
        // Every range goes through slices, however long: a player's first request for a film is `bytes=0-` (the
        // whole film), and every viewer's should share the same slices. A long read cannot flush hot slices:
        // moka admits a new slice only over victims used less often (TinyLFU). Only a cache too small to hold
        // one slice is passed by.
        if self.slice_size > self.capacity {
            return self.bypass(storage, object, Some(etag), range).await;
        }
        let first = range.start / self.slice_size;
        let last = (range.end - 1) / self.slice_size;
        // A range inside one slice that is in memory (a player's probe, most segments) takes one lookup and
        // nothing else: no loader, no read-ahead state.
        if first == last
            && let Some(hit) = self.one_slice_hit(slices, object, etag, first, &range).await
        {
            return Ok(hit);
        }
        let loader = Loader {
            slices: slices.clone(),
            storage: storage.clone(),
            memory: self.memory.clone(),
            disk: self.disk.clone(),
            metrics: self.metrics.clone(),
            object: object.into(),
            etag: etag.into(),
            slice_size: self.slice_size,
            size,
            range: range.clone(),
        };
        let checked = first..=last.min(first + HIT_CHECK - 1);
        let in_memory = |i: u64| slices.contains_key(&loader.key(i));
        let status = if checked.clone().all(in_memory) {
            Status::Hit
        } else if let Some(disk) = &self.disk
            && checked.clone().all(|i| in_memory(i) || disk.contains(&loader.key(i)))
        {
            Status::Disk
        } else {
            Status::Miss
        };

        // How fast this reader will read is not known yet: a slice while memory is plentiful, chunks otherwise.
        let head = loader.piece(first, Some(self.memory.spare())).await?;
        let status = match status {
            _ if head.streamed => Status::Streamed,
            // Its file turned out corrupt or unreadable: storage answered.
            Status::Disk if head.from_storage => Status::Miss,
            status => status,
        };
        let content_type = head.content_type.as_deref().map(str::to_owned);
        // A streamed first piece takes its first chunk now, so memory in use is a 503, not a cut answer.
        let mut head_stream = head.stream;
        let opening = match head_stream.next().await {
            Some(chunk) => Some(chunk?),
            None => None,
        };
        let head_stream = stream::iter(opening.map(Ok)).chain(head_stream);

        let ahead = Pieces { loader, next: first + 1, last, ahead: None, handed: Instant::now() };
        let rest = stream::unfold(ahead, Pieces::step).try_flatten();
        let metrics = self.metrics.clone();
        let stream = head_stream.chain(rest).inspect_ok(move |b| {
            metrics.cache_bytes.inc_by(b.len() as u64);
        });
        self.metrics.cache_size_bytes.set(slices.weighted_size() as i64);
        Ok((Body { stream: stream.boxed(), content_type }, status))
    }

    /// `range`, which lies inside slice `index`, if that slice is in memory.
    async fn one_slice_hit(
        &self,
        slices: &Slices,
        object: &str,
        etag: &str,
        index: u64,
        range: &Range<u64>,
    ) -> Option<(Body, Status)> {
        let key = SliceKey { object: object.into(), etag: etag.into(), index };
        let slice = slices.get(&key).await?;
        let start = index * self.slice_size;
        let wanted = usize::try_from(range.start - start).ok()?..usize::try_from(range.end - start).ok()?;
        if wanted.end > slice.bytes.len() {
            return None;
        }
        hit(&self.metrics, self.disk.as_ref(), &key, &slice);
        let bytes = slice.bytes.slice(wanted);
        let counted = self.metrics.cache_bytes.clone();
        let stream = stream::once(async move {
            counted.inc_by(bytes.len() as u64);
            Ok(bytes)
        });
        let content_type = slice.content_type.as_deref().map(str::to_owned);
        Some((Body { stream: stream.boxed(), content_type }, Status::Hit))
    }

    async fn bypass(
        &self,
        storage: &Storage,
        object: &str,
        etag: Option<&str>,
        range: Range<u64>,
    ) -> Result<(Body, Status), StorageError> {
        let body = storage.get(object, range, etag).await?;
        let mut stream = held(body.stream, self.memory.clone(), self.metrics.clone());
        // The first chunk is read and held before the answer starts, as a slice is: storage that fails or hangs,
        // or memory that stays in use, is then a status (502, 504, 503), not a 200 cut short.
        let first = stream.next().await.transpose()?;
        let stream = stream::iter(first.map(Ok)).chain(stream).boxed();
        Ok((Body { stream, content_type: body.content_type }, Status::Bypass))
    }
}

/// Counts a memory hit, and a use for the disk tier's admission.
fn hit(metrics: &Metrics, disk: Option<&DiskCache>, key: &SliceKey, slice: &Slice) {
    metrics.cache_hits.inc();
    if let Some(disk) = disk {
        disk.used(key, &slice.bytes, slice.content_type.as_ref());
    }
}

/// Storage's chunks as they arrive, counted, each holding its memory until the client has taken it.
fn held(stream: PieceStream, memory: Memory, metrics: Arc<Metrics>) -> PieceStream {
    stream
        .inspect_ok(move |b| {
            metrics.storage_bytes.inc_by(b.len() as u64);
        })
        .and_then(move |chunk| {
            let memory = memory.clone();
            async move { memory.hold(chunk).await }
        })
        .boxed()
}

/// Bytes a stream reads per chunk when it streams a slice past the cache (nginx sends with 32 KiB buffers too).
const STREAM_CHUNK: usize = 32 * 1024;

/// A reader that asks for the next slice within this long of getting the previous one keeps up (at 1 MiB
/// slices, about 8 Mbit/s): its next slice is read ahead. A slower reader gets each slice when it asks, which
/// the socket buffers hide, and holds one slice instead of two.
const KEEPS_UP: Duration = Duration::from_secs(1);

/// One slice's worth of an answer: a slice (cut to the range) or a stream of small chunks past the cache.
struct Piece {
    stream: PieceStream,
    content_type: Option<Arc<str>>,
    /// Streamed past the cache rather than cut from a cached slice.
    streamed: bool,
    /// Read from storage for this answer (or for a concurrent one it shared the read with).
    from_storage: bool,
}

/// Reads one answer's slices; cheap to clone into a read-ahead task.
#[derive(Clone)]
struct Loader {
    slices: Slices,
    storage: Storage,
    memory: Memory,
    disk: Option<DiskCache>,
    metrics: Arc<Metrics>,
    object: Arc<str>,
    etag: Arc<str>,
    slice_size: u64,
    size: u64,
    range: Range<u64>,
}

impl Loader {
    fn key(&self, index: u64) -> SliceKey {
        SliceKey { object: self.object.clone(), etag: self.etag.clone(), index }
    }

    /// The object's bytes slice `index` covers.
    fn span(&self, index: u64) -> Range<u64> {
        let start = index * self.slice_size;
        start..(start + self.slice_size).min(self.size)
    }

    /// The part of slice `index` the answer wants.
    fn wanted(&self, index: u64) -> Range<u64> {
        let span = self.span(index);
        span.start.max(self.range.start)..span.end.min(self.range.end)
    }

    /// The wanted part of slice `index`, `loaded` for this answer (not found in memory).
    fn cut(&self, index: u64, slice: Slice, loaded: bool) -> Piece {
        let start = index * self.slice_size;
        let wanted = self.wanted(index);
        let bytes = slice.bytes.slice((wanted.start - start) as usize..(wanted.end - start) as usize);
        Piece {
            stream: stream::once(async move { Ok(bytes) }).boxed(),
            from_storage: loaded && !slice.from_disk,
            content_type: slice.content_type,
            streamed: false,
        }
    }

    /// Slice `index`: from the cache, loaded into it when `spare` allows (memory for a whole slice free now with
    /// that many bytes left over), or else streamed past it in small chunks, each waiting for its own memory.
    async fn piece(&self, index: u64, spare: Option<usize>) -> Result<Piece, StorageError> {
        if let Some(s) = self.cached(index).await {
            return Ok(self.cut(index, s, false));
        }
        let Some(spare) = spare else { return self.streamed(index).await };
        match self.load(index, spare).await {
            Ok(slice) => Ok(self.cut(index, slice, true)),
            Err(StorageError::Busy) => self.streamed(index).await,
            Err(e) => Err(e),
        }
    }

    /// Slice `index` read ahead: only when it is cached or memory for it is free with room to spare, so read-ahead
    /// never takes the memory a reader that asks needs.
    async fn ahead(self, index: u64) -> Option<Result<Piece, StorageError>> {
        if let Some(s) = self.cached(index).await {
            return Some(Ok(self.cut(index, s, false)));
        }
        match self.load(index, self.memory.spare()).await {
            Ok(slice) => Some(Ok(self.cut(index, slice, true))),
            Err(StorageError::Busy) => None,
            Err(e) => Some(Err(e)),
        }
    }

    async fn cached(&self, index: u64) -> Option<Slice> {
        let key = self.key(index);
        let s = self.slices.get(&key).await?;
        hit(&self.metrics, self.disk.as_ref(), &key, &s);
        Some(s)
    }

    /// Loads slice `index` into the cache if memory for it is free now with `spare` bytes left over, else
    /// [`StorageError::Busy`]. Concurrent loads of one slice share one storage read and one reservation: a crowd
    /// arriving for a cold film waits for the first reader's load instead of each streaming its own copy.
    async fn load(&self, index: u64, spare: usize) -> Result<Slice, StorageError> {
        let span = self.span(index);
        let len = (span.end - span.start) as usize;
        // moka evicts lazily: settle its pending evictions, which may give memory back, before looking.
        if self.memory.permits.available_permits() < len.saturating_add(spare) {
            self.slices.run_pending_tasks().await;
        }
        let storage = self.storage.clone();
        let metrics = self.metrics.clone();
        let memory = self.memory.clone();
        let (object, etag) = (self.object.clone(), self.etag.clone());
        let disk = self.disk.clone();
        let key = self.key(index);
        self.slices
            .try_get_with(key.clone(), async move {
                let permit = memory.try_reserve(len, spare).ok_or(StorageError::Busy)?;
                // The disk tier first: an intact file answers without storage (its bytes charged like any slice).
                if let Some(disk) = &disk
                    && let Some((bytes, content_type)) = disk.read(&key, len).await
                {
                    return Ok(Slice { bytes: memory.wrap(bytes, permit), content_type, from_disk: true });
                }
                metrics.cache_misses.inc();
                let body = storage.get(&object, span.clone(), Some(&etag)).await?;
                let mut buf = memory.spares.take(len);
                let mut chunks = body.stream;
                while let Some(chunk) = chunks.next().await {
                    let chunk = chunk?;
                    // The buffer stays the size asked for: a server that sends more is wrong, not a reason to grow.
                    if buf.len() + chunk.len() > len {
                        return Err(StorageError::Unavailable(format!("more than the {len} bytes asked for")));
                    }
                    buf.extend_from_slice(&chunk);
                }
                if buf.len() != len {
                    return Err(StorageError::Unavailable(format!("{} of the {len} bytes asked for", buf.len())));
                }
                metrics.storage_bytes.inc_by(buf.len() as u64);
                let bytes = memory.wrap_buffer(buf, permit);
                let slice = Slice { bytes, content_type: body.content_type.map(Arc::from), from_disk: false };
                if let Some(disk) = &disk {
                    disk.used(&key, &slice.bytes, slice.content_type.as_ref());
                }
                Ok::<_, StorageError>(slice)
            })
            .await
            .map_err(|e: Arc<StorageError>| (*e).clone())
    }

    /// The wanted part of slice `index` straight from storage in small chunks, each holding its own memory.
    async fn streamed(&self, index: u64) -> Result<Piece, StorageError> {
        self.metrics.cache_streamed.inc();
        let body = self.storage.get_in_chunks(&self.object, self.wanted(index), Some(&self.etag), STREAM_CHUNK).await?;
        let stream = held(body.stream, self.memory.clone(), self.metrics.clone());
        Ok(Piece { stream, content_type: body.content_type.map(Arc::from), streamed: true, from_storage: true })
    }
}

/// The slices of an answer after the first, each read when the client asks for it, and the next one read ahead
/// (on its own task, so it loads while the current one is sent) only for a reader that keeps up.
struct Pieces {
    loader: Loader,
    next: u64,
    last: u64,
    ahead: Option<(u64, ReadAhead)>,
    /// When the previous piece was handed to the client.
    handed: Instant,
}

type PieceStream = BoxStream<'static, Result<Bytes, StorageError>>;

/// A slice being read ahead on its own task (aborted if the answer ends first); `None` when memory was short.
type ReadAhead = AbortOnDropHandle<Option<Result<Piece, StorageError>>>;

impl Pieces {
    async fn step(mut self) -> Option<(Result<PieceStream, StorageError>, Pieces)> {
        if self.next > self.last {
            return None;
        }
        let index = self.next;
        let keeps_up = self.handed.elapsed() < KEEPS_UP;
        let read_ahead = match self.ahead.take() {
            Some((i, task)) if i == index => task.await.ok().flatten(),
            _ => None,
        };
        // A reader that keeps up gives a slice back soon; a slow one would hold it for as long as it takes to send
        // (16 s for 1 MiB at 64 KiB/s), so it gets cached slices and small chunks, never a slice of its own.
        let spare = keeps_up.then_some(0);
        let piece = match read_ahead {
            Some(piece) => piece,
            None => self.loader.piece(index, spare).await,
        };
        self.next += 1;
        if keeps_up && self.next <= self.last {
            let task = tokio::spawn(self.loader.clone().ahead(self.next));
            self.ahead = Some((self.next, AbortOnDropHandle::new(task)));
        }
        self.handed = Instant::now();
        Some((piece.map(|p| p.stream), self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(slice: usize) -> Memory {
        let total = 64 * slice;
        Memory {
            permits: Arc::new(Semaphore::new(total)),
            total,
            wait: Duration::from_secs(1),
            spares: Arc::new(Spares { size: slice, free: std::sync::Mutex::default() }),
            metrics: Arc::new(Metrics::default()),
        }
    }

    fn spare_count(m: &Memory) -> usize {
        m.spares.free.lock().unwrap().len()
    }

    #[tokio::test]
    async fn a_slice_buffer_is_used_again_once_nothing_holds_its_slice() {
        let m = memory(4096);
        let mut buffer = m.spares.take(4096);
        buffer.extend_from_slice(&[7; 4096]);
        let at = buffer.as_ptr();
        let slice = m.wrap_buffer(buffer, m.reserve(4096).await.unwrap());
        let part = slice.slice(10..20);
        drop(slice);
        assert_eq!(spare_count(&m), 0, "a part of the slice is still held");
        assert_eq!(&part[..], &[7; 10]);
        drop(part);
        assert_eq!(m.permits.available_permits(), m.total, "its memory is given back");
        let again = m.spares.take(4096);
        assert_eq!((again.as_ptr(), again.len(), again.capacity()), (at, 0, 4096), "the same buffer, empty");

        // A short (last) slice's buffer is not kept, nor a slice read from disk, and at most SPARES are.
        drop(m.wrap_buffer(m.spares.take(100), m.reserve(100).await.unwrap()));
        drop(m.wrap(Bytes::from(vec![1; 4096]), m.reserve(4096).await.unwrap()));
        assert_eq!(spare_count(&m), 0);
        for _ in 0..SPARES + 3 {
            m.spares.put(BytesMut::with_capacity(4096));
        }
        assert_eq!(spare_count(&m), SPARES);
    }
}
