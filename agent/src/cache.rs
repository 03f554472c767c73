//! A cache of fixed-size, aligned slices of objects, so a popular video is read from storage once, not once per
//! viewer. Slices are keyed by object and ETag: a changed object has a new ETag, so its old slices are never
//! served once its new metadata is known (see `metadata.rs`). The cache is bounded in bytes; concurrent requests
//! for one missing slice share one storage read.

use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream;
use futures::{FutureExt, StreamExt, TryStreamExt};
use moka::future::Cache;
use moka::notification::RemovalCause;

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
    metrics: Arc<Metrics>,
}

impl SliceCache {
    /// `capacity` bytes of slices of `slice_size` bytes; a capacity of 0 turns the cache off.
    pub fn new(capacity: u64, slice_size: u64, metrics: Arc<Metrics>) -> SliceCache {
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
        SliceCache { slices, slice_size: slice_size.max(4096), capacity, metrics }
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

        let loader = Loader { slices: slices.clone(), storage: storage.clone(), metrics: self.metrics.clone() };
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
        let stream = body
            .stream
            .inspect_ok(move |b| {
                metrics.storage_bytes.inc_by(b.len() as u64);
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
    metrics: Arc<Metrics>,
}

impl Loader {
    async fn get(&self, key: SliceKey, span: Range<u64>) -> Result<Slice, StorageError> {
        if let Some(s) = self.slices.get(&key).await {
            self.metrics.cache_hits.inc();
            return Ok(s);
        }
        // try_get_with runs one load per key; concurrent callers for the same slice wait for it.
        let storage = self.storage.clone();
        let metrics = self.metrics.clone();
        let (object, etag) = (key.object.clone(), key.etag.clone());
        self.slices
            .try_get_with(key, async move {
                metrics.cache_misses.inc();
                let body = storage.get(&object, span.clone(), Some(&etag)).await?;
                let mut buf = BytesMut::with_capacity((span.end - span.start) as usize);
                let mut chunks = body.stream;
                while let Some(chunk) = chunks.next().await {
                    buf.extend_from_slice(&chunk?);
                }
                metrics.storage_bytes.inc_by(buf.len() as u64);
                Ok::<_, StorageError>(Slice { bytes: buf.freeze(), content_type: body.content_type.map(Arc::from) })
            })
            .await
            .map_err(|e: Arc<StorageError>| (*e).clone())
    }
}
