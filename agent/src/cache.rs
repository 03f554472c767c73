//! A cache of fixed-size, aligned slices of objects, so a popular video is read from storage once, not once per
//! viewer. Slices are keyed by object and ETag: a changed object has a new ETag, so its old slices are never
//! served once its new metadata is known (see `metadata.rs`). The cache is bounded in bytes; concurrent requests
//! for one missing slice share one storage read.
//!
//! Memory is bounded as a whole, not only the cache's share: every slice (and every chunk streamed past the cache)
//! holds permits of one semaphore for its length for as long as anything holds its bytes, the cache or a stream
//! that is still sending a slice the cache has since dropped. The semaphore has the cache's capacity plus the
//! streams' budget, so slice memory never exceeds their sum, whatever the mix of slow readers; a read that cannot
//! get memory within the storage timeout is refused with 503 (or, mid-answer, ends the answer).

use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream;
use futures::{FutureExt, StreamExt, TryStreamExt};
use moka::future::Cache;
use moka::notification::RemovalCause;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;
use crate::storage::{Body, Storage, StorageError};

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct SliceKey {
    object: Arc<str>,
    etag: Arc<str>,
    index: u64,
}

/// One slice and the content type storage reported with it.
#[derive(Clone)]
struct Slice {
    bytes: Bytes,
    content_type: Option<Arc<str>>,
}

/// Whether an answer came from the cache, for the `X-Cache` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The answer's first slices (up to `HIT_CHECK`, so a seek into a long film costs a few lookups, not one
    /// per slice to its end) were cached when the request arrived.
    Hit,
    /// At least one slice was loaded from storage.
    Miss,
    /// Not cacheable (no ETag, or cache off or smaller than a slice): streamed straight from storage.
    Bypass,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Hit => "HIT",
            Status::Miss => "MISS",
            Status::Bypass => "BYPASS",
        }
    }
}

/// How many of an answer's first slices `X-Cache: HIT` speaks for.
const HIT_CHECK: u64 = 16;

pub struct SliceCache {
    slices: Option<Cache<SliceKey, Slice>>,
    slice_size: u64,
    capacity: u64,
    memory: Memory,
    metrics: Arc<Metrics>,
}

/// The bytes slices and streamed chunks may hold at once, and how long a read waits for some.
#[derive(Clone)]
struct Memory {
    permits: Arc<Semaphore>,
    total: usize,
    wait: std::time::Duration,
    metrics: Arc<Metrics>,
}

/// Bytes that give their permits back when the last holder drops them.
struct Held {
    bytes: Bytes,
    permit: Option<OwnedSemaphorePermit>,
    memory: Memory,
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.memory.report();
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

    /// `bytes`, charged to the budget (by `permit`) until every copy of the returned handle is gone.
    fn wrap(&self, bytes: Bytes, permit: OwnedSemaphorePermit) -> Bytes {
        Bytes::from_owner(Held { bytes, permit: Some(permit), memory: self.clone() })
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
    /// more for what streams hold beyond the cache; a read waits up to `wait` for memory.
    pub fn new(
        capacity: u64,
        slice_size: u64,
        budget: u64,
        wait: std::time::Duration,
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
                .build()
        });
        let slice_size = slice_size.max(4096);
        // At least two slices beyond the cache, so one stream can always make progress.
        let total = capacity.saturating_add(budget.max(2 * slice_size));
        let total = usize::try_from(total).unwrap_or(Semaphore::MAX_PERMITS).min(Semaphore::MAX_PERMITS);
        let permits = Arc::new(Semaphore::new(total));
        let memory = Memory { permits, total, wait, metrics: metrics.clone() };
        SliceCache { slices, slice_size, capacity, memory, metrics }
    }

    /// The bytes of `range` of an object of `size` bytes, from cached slices where possible. The first slice is
    /// ready before this returns (so storage errors become a status code); the rest stream as the client reads,
    /// with the next slice loading while the current one is sent, so a stream holds at most two slices.
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
        let object: Arc<str> = object.into();
        let etag: Arc<str> = etag.into();
        let first = range.start / self.slice_size;
        let last = (range.end - 1) / self.slice_size;
        let key = |index| SliceKey { object: object.clone(), etag: etag.clone(), index };
        let checked = first..=last.min(first + HIT_CHECK - 1);
        let status = if checked.into_iter().all(|i| slices.contains_key(&key(i))) { Status::Hit } else { Status::Miss };

        let loader = Loader {
            slices: slices.clone(),
            storage: storage.clone(),
            memory: self.memory.clone(),
            metrics: self.metrics.clone(),
        };
        let slice_size = self.slice_size;
        let span = move |index: u64| {
            let start = index * slice_size;
            start..(start + slice_size).min(size)
        };
        let head = loader.get(key(first), span(first)).await?;
        let content_type = head.content_type.as_deref().map(str::to_owned);
        let cut = move |index: u64, slice: Slice| {
            let start = index * slice_size;
            let from = range.start.max(start) - start;
            let to = range.end.min(start + slice.bytes.len() as u64) - start;
            slice.bytes.slice(from as usize..to as usize)
        };
        let metrics = self.metrics.clone();
        let first_bytes = cut(first, head);
        let rest = stream::iter(first + 1..=last)
            .map(move |index| {
                let loader = loader.clone();
                let key = SliceKey { object: object.clone(), etag: etag.clone(), index };
                // Boxed: the read-ahead queue sizes its nodes to this future, and a pointer is all it needs.
                async move { loader.get(key, span(index)).await.map(|s| cut(index, s)) }.boxed()
            })
            // Read-ahead of one slice: storage latency overlaps with sending.
            .buffered(2);
        let stream = stream::once(async move { Ok(first_bytes) }).chain(rest).inspect_ok(move |b| {
            metrics.cache_bytes.inc_by(b.len() as u64);
        });
        self.metrics.cache_size_bytes.set(slices.weighted_size() as i64);
        Ok((Body { stream: stream.boxed(), content_type }, status))
    }

    async fn bypass(
        &self,
        storage: &Storage,
        object: &str,
        etag: Option<&str>,
        range: Range<u64>,
    ) -> Result<(Body, Status), StorageError> {
        let body = storage.get(object, range, etag).await?;
        let metrics = self.metrics.clone();
        let memory = self.memory.clone();
        let stream = body
            .stream
            .inspect_ok(move |b| {
                metrics.storage_bytes.inc_by(b.len() as u64);
            })
            .and_then(move |chunk| {
                let memory = memory.clone();
                async move { memory.hold(chunk).await }
            })
            .boxed();
        Ok((Body { stream, content_type: body.content_type }, Status::Bypass))
    }
}

/// Loads slices into the cache; cheap to clone into each slice's future.
#[derive(Clone)]
struct Loader {
    slices: Cache<SliceKey, Slice>,
    storage: Storage,
    memory: Memory,
    metrics: Arc<Metrics>,
}

impl Loader {
    async fn get(&self, key: SliceKey, span: Range<u64>) -> Result<Slice, StorageError> {
        if let Some(s) = self.slices.get(&key).await {
            self.metrics.cache_hits.inc();
            return Ok(s);
        }
        // moka evicts lazily: settle its pending evictions before waiting for memory they would give back.
        if self.memory.permits.available_permits() < (span.end - span.start) as usize {
            self.slices.run_pending_tasks().await;
        }
        // try_get_with runs one load per key; concurrent callers for the same slice wait for it.
        let storage = self.storage.clone();
        let metrics = self.metrics.clone();
        let memory = self.memory.clone();
        let (object, etag) = (key.object.clone(), key.etag.clone());
        self.slices
            .try_get_with(key, async move {
                metrics.cache_misses.inc();
                // Memory first, so a slice is never read into bytes the budget has not granted.
                let permit = memory.reserve((span.end - span.start) as usize).await?;
                let body = storage.get(&object, span.clone(), Some(&etag)).await?;
                let mut buf = BytesMut::with_capacity((span.end - span.start) as usize);
                let mut chunks = body.stream;
                while let Some(chunk) = chunks.next().await {
                    buf.extend_from_slice(&chunk?);
                }
                metrics.storage_bytes.inc_by(buf.len() as u64);
                let bytes = memory.wrap(buf.freeze(), permit);
                Ok::<_, StorageError>(Slice { bytes, content_type: body.content_type.map(Arc::from) })
            })
            .await
            .map_err(|e: Arc<StorageError>| (*e).clone())
    }
}
