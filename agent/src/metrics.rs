//! Prometheus metrics, served on the admin port.
//!
//! Every request updates a few of them from whichever core serves it, so the request path touches no lock: the
//! labelled counters it needs are looked up once at start (a `Family` lookup takes a read lock on the family's
//! map), and the latency histograms are atomic buckets (`prometheus_client`'s `Histogram` takes a mutex per
//! observation, which the cores queue on).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// A histogram of durations updated with two relaxed atomic adds and no lock; the sum is kept in nanoseconds.
#[derive(Clone, Debug)]
pub struct Histogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    bounds: Vec<f64>,
    /// One per bound, and a last one for +Inf; not cumulative (the encoder adds them up).
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: impl Iterator<Item = f64>) -> Histogram {
        let bounds: Vec<f64> = bounds.collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram { inner: Arc::new(HistogramInner { bounds, counts, sum_nanos: AtomicU64::new(0) }) }
    }

    /// Records `seconds` (negative and NaN count as zero).
    pub fn observe(&self, seconds: f64) {
        let i = self.inner.bounds.iter().position(|b| seconds <= *b).unwrap_or(self.inner.bounds.len());
        self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_nanos.fetch_add((seconds.max(0.0) * 1e9) as u64, Ordering::Relaxed);
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts: Vec<u64> = self.inner.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let buckets: Vec<(f64, u64)> =
            self.inner.bounds.iter().copied().chain([f64::MAX]).zip(counts.iter().copied()).collect();
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The `cache` label values of object bodies, in the order [`Served`] and [`Metrics::streams_by_cache`] keep them.
pub const CACHE_LABELS: [&str; 6] = ["hit", "disk", "miss", "streamed", "bypass", "none"];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Statuses the agent answers; their `requests` counters are looked up once (others go through the family).
const STATUSES: [u16; 16] = [200, 206, 304, 400, 401, 403, 404, 405, 412, 413, 416, 429, 500, 502, 503, 504];

/// The egress counters, one per status class and cache label, resolved at start.
pub struct Served {
    family: Family<ServedLabel, Counter>,
    counters: Vec<Counter>,
}

impl Served {
    fn new(family: &Family<ServedLabel, Counter>) -> Served {
        let counters = STATUS_CLASSES
            .iter()
            .flat_map(|class| CACHE_LABELS.iter().map(move |cache| (*class, *cache)))
            .map(|(status_class, cache)| family.get_or_create(&ServedLabel { status_class, cache }).clone())
            .collect();
        Served { family: family.clone(), counters }
    }

    /// The counter of answers with `status` whose body came from `cache` (a label outside [`CACHE_LABELS`] goes
    /// through the family's map).
    pub fn get(&self, status: u16, cache: &'static str) -> Counter {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        match CACHE_LABELS.iter().position(|c| *c == cache) {
            Some(i) => self.counters[class * CACHE_LABELS.len() + i].clone(),
            None => self.family.get_or_create(&ServedLabel { status_class: STATUS_CLASSES[class], cache }).clone(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// What egress is broken down by: the status class (`2xx`..`5xx`) and where the body came from (`hit`, `disk`, `miss`,
/// `disk`, `streamed`, `bypass`, or `none` for answers that are not object bodies).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServedLabel {
    pub status_class: &'static str,
    pub cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    pub cache: &'static str,
}

/// Every metric of the agent. Cheap to update from any task.
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<StatusLabel, Counter>,
    pub rejections: Family<ReasonLabel, Counter>,
    pub bytes_sent: Counter,
    pub sendfile_bytes: Counter,
    pub active_streams: Gauge,
    pub ttfb: Histogram,
    pub storage_latency: Histogram,
    pub keyring_keys: Family<StateLabel, Gauge>,
    pub keyring_reload_errors: Counter,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    /// Slices streamed past the cache in small chunks because memory for a whole slice was in use.
    pub cache_streamed: Counter,
    pub cache_evictions: Counter,
    pub cache_bytes: Counter,
    pub storage_bytes: Counter,
    pub cache_size_bytes: Gauge,
    /// Bytes of slice memory (cache and streams) held now; never above cache size + stream budget.
    pub slice_memory_bytes: Gauge,
    /// Reads refused or cut because the memory budget was in use.
    pub memory_waits_failed: Counter,
    /// Blocking storage calls running past the storage timeout (threads stuck in the kernel); set when scraped.
    pub storage_stuck_calls: Gauge,
    /// The served certificate's notAfter, in Unix seconds (registered only with TLS on, so alerts see no zero).
    pub tls_cert_expiry: Gauge,
    /// Certificate and key pairs loaded by a reload (the first load is not counted).
    pub tls_reloads: Counter,
    /// Changed certificate and key pairs refused (unreadable, unparsable, key not matching), each counted once.
    pub tls_reload_errors: Counter,
    /// Body bytes sent (egress) by status class and cache status, counted as they leave, aborted bodies included.
    pub served_bytes: Family<ServedLabel, Counter>,
    /// [`Metrics::served_bytes`]'s counters, resolved once.
    pub served: Served,
    /// [`Metrics::streams`]' counters in [`CACHE_LABELS`] order, resolved once.
    pub streams_by_cache: Vec<Counter>,
    /// [`Metrics::requests`]' counters for the statuses the agent answers, resolved once.
    requests_by_status: Vec<(u16, Counter)>,
    /// Every answer that is not the object, by the reason code its JSON body and the access log carry.
    pub refusals: Family<ReasonLabel, Counter>,
    /// Object bodies started, by cache status.
    pub streams: Family<CacheLabel, Counter>,
    /// Answers whose client went away before the body ended.
    pub client_aborts: Counter,
    pub access_log_lines: Counter,
    /// The disk tier (registered only with it on, see `disk.rs`): slices read from disk.
    pub disk_cache_hits: Counter,
    /// Slices written to disk.
    pub disk_cache_writes: Counter,
    /// Writes that failed (directory missing or read-only, disk full): the slice stays in memory and storage only.
    pub disk_cache_write_errors: Counter,
    /// Writes dropped because the writer's queue was full (a slow disk): never a wait on the request path.
    pub disk_cache_writes_dropped: Counter,
    /// Files that did not match their header, length or checksum: deleted, and the slice read from storage.
    pub disk_cache_corrupt: Counter,
    /// Reads that failed or timed out, answered from storage instead.
    pub disk_cache_read_errors: Counter,
    /// Files deleted to stay within the disk cache's size.
    pub disk_cache_evictions: Counter,
    /// Bytes the disk cache's files take now (whole 4 KiB blocks).
    pub disk_cache_size_bytes: Gauge,
    /// 1 while the last write (or the directory's creation) succeeded, 0 after a failure.
    pub disk_cache_writable: Gauge,
    /// Access log lines dropped because stdout did not keep up (the queue is bounded; serving never waits on it).
    pub access_log_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("videodelivery_agent");
        let m = Metrics {
            requests: Family::default(),
            rejections: Family::default(),
            bytes_sent: Counter::default(),
            sendfile_bytes: Counter::default(),
            active_streams: Gauge::default(),
            ttfb: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            storage_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            keyring_keys: Family::default(),
            keyring_reload_errors: Counter::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_streamed: Counter::default(),
            cache_evictions: Counter::default(),
            cache_bytes: Counter::default(),
            storage_bytes: Counter::default(),
            cache_size_bytes: Gauge::default(),
            slice_memory_bytes: Gauge::default(),
            memory_waits_failed: Counter::default(),
            storage_stuck_calls: Gauge::default(),
            tls_cert_expiry: Gauge::default(),
            tls_reloads: Counter::default(),
            tls_reload_errors: Counter::default(),
            served_bytes: Family::default(),
            served: Served { family: Family::default(), counters: Vec::new() },
            streams_by_cache: Vec::new(),
            requests_by_status: Vec::new(),
            refusals: Family::default(),
            streams: Family::default(),
            client_aborts: Counter::default(),
            access_log_lines: Counter::default(),
            disk_cache_hits: Counter::default(),
            disk_cache_writes: Counter::default(),
            disk_cache_write_errors: Counter::default(),
            disk_cache_writes_dropped: Counter::default(),
            disk_cache_corrupt: Counter::default(),
            disk_cache_read_errors: Counter::default(),
            disk_cache_evictions: Counter::default(),
            disk_cache_size_bytes: Gauge::default(),
            disk_cache_writable: Gauge::default(),
            access_log_dropped: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "Requests answered, by status code", m.requests.clone());
        registry.register(
            "token_rejections",
            "Requests refused by token verification, by reason",
            m.rejections.clone(),
        );
        registry.register("sent_bytes", "Body bytes sent to clients", m.bytes_sent.clone());
        registry.register(
            "sendfile_bytes",
            "Body bytes of local files handed to sendfile, sent from the page cache without a copy (--sendfile)",
            m.sendfile_bytes.clone(),
        );
        registry.register("active_streams", "Response bodies being streamed now", m.active_streams.clone());
        registry.register("time_to_first_byte_seconds", "Time from request to response headers", m.ttfb.clone());
        registry.register("storage_latency_seconds", "Latency of storage metadata lookups", m.storage_latency.clone());
        registry.register("keyring_keys", "Keys in the loaded keyring, by state", m.keyring_keys.clone());
        registry.register(
            "keyring_reload_errors",
            "Keyring files that failed to load",
            m.keyring_reload_errors.clone(),
        );
        registry.register("cache_hits", "Slices served from the slice cache", m.cache_hits.clone());
        registry.register("cache_misses", "Slices loaded from storage into the cache", m.cache_misses.clone());
        registry.register(
            "cache_streamed_slices",
            "Slices streamed past the cache in small chunks because memory for a whole slice was in use",
            m.cache_streamed.clone(),
        );
        registry.register("cache_evictions", "Slices evicted to stay within the cache size", m.cache_evictions.clone());
        registry.register("cache_served_bytes", "Body bytes served from the slice cache", m.cache_bytes.clone());
        registry.register("storage_read_bytes", "Body bytes read from storage", m.storage_bytes.clone());
        registry.register("cache_size_bytes", "Bytes held by the slice cache now", m.cache_size_bytes.clone());
        registry.register(
            "slice_memory_bytes",
            "Bytes of slices and streamed chunks held now, by the cache and by streams",
            m.slice_memory_bytes.clone(),
        );
        registry.register(
            "memory_busy",
            "Reads refused or cut short because the slice memory budget was in use",
            m.memory_waits_failed.clone(),
        );
        registry.register(
            "storage_stuck_calls",
            "Blocking storage calls still running past --storage-timeout, each holding a storage thread",
            m.storage_stuck_calls.clone(),
        );
        registry.register(
            "served_bytes",
            "Body bytes sent to clients (egress), by status class and cache status (hit, disk, miss, streamed, bypass; \
             none for answers that are not object bodies)",
            m.served_bytes.clone(),
        );
        registry.register(
            "refusals",
            "Requests not answered with the object, by reason (the reason in the JSON body and the access log)",
            m.refusals.clone(),
        );
        registry.register("streams", "Object bodies started, by cache status", m.streams.clone());
        registry.register(
            "client_aborts",
            "Answers whose client went away before the body ended",
            m.client_aborts.clone(),
        );
        registry.register("access_log_lines", "Access log lines written to stdout", m.access_log_lines.clone());
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because stdout did not keep up",
            m.access_log_dropped.clone(),
        );
        let served = Served::new(&m.served_bytes);
        let streams_by_cache = CACHE_LABELS[..CACHE_LABELS.len() - 1]
            .iter()
            .map(|cache| m.streams.get_or_create(&CacheLabel { cache }).clone())
            .collect();
        let requests_by_status = STATUSES
            .iter()
            .map(|&status| (status, m.requests.get_or_create(&StatusLabel { status }).clone()))
            .collect();
        Metrics { registry, served, streams_by_cache, requests_by_status, ..m }
    }
}

impl Metrics {
    /// Counts an answer with `status`.
    pub fn count_request(&self, status: u16) {
        match self.requests_by_status.iter().find(|(s, _)| *s == status) {
            Some((_, counter)) => counter.inc(),
            None => self.requests.get_or_create(&StatusLabel { status }).inc(),
        };
    }

    /// Counts an object body started with `cache` status.
    pub fn count_stream(&self, cache: &'static str) {
        match CACHE_LABELS.iter().position(|c| *c == cache).and_then(|i| self.streams_by_cache.get(i)) {
            Some(counter) => counter.inc(),
            None => self.streams.get_or_create(&CacheLabel { cache }).inc(),
        };
    }

    /// Adds the TLS metrics, for an agent serving HTTPS.
    pub fn register_tls(&mut self) {
        let sub = self.registry.sub_registry_with_prefix("tls");
        sub.register(
            "cert_expiry_timestamp_seconds",
            "When the certificate served on the video port expires, in Unix seconds",
            self.tls_cert_expiry.clone(),
        );
        sub.register("cert_reloads", "Renewed certificate and key pairs loaded", self.tls_reloads.clone());
        sub.register(
            "cert_reload_errors",
            "Changed certificate and key pairs refused (the last good pair kept serving)",
            self.tls_reload_errors.clone(),
        );
    }

    /// Adds the disk tier's metrics, for an agent with `--disk-cache-dir`.
    pub fn register_disk(&mut self) {
        let sub = self.registry.sub_registry_with_prefix("disk_cache");
        sub.register("hits", "Slices read from the disk cache instead of storage", self.disk_cache_hits.clone());
        sub.register(
            "writes",
            "Slices written to the disk cache (on first use while it has room, then over a file used less)",
            self.disk_cache_writes.clone(),
        );
        sub.register(
            "write_errors",
            "Disk cache writes that failed (directory missing or read-only, disk full); serving goes on without them",
            self.disk_cache_write_errors.clone(),
        );
        sub.register(
            "writes_dropped",
            "Disk cache writes dropped because the writer's queue was full",
            self.disk_cache_writes_dropped.clone(),
        );
        sub.register(
            "corrupt",
            "Disk cache files that failed their length or checksum check, deleted and read from storage instead",
            self.disk_cache_corrupt.clone(),
        );
        sub.register(
            "read_errors",
            "Disk cache reads that failed or timed out, read from storage instead",
            self.disk_cache_read_errors.clone(),
        );
        sub.register(
            "evictions",
            "Disk cache files deleted to stay within its size",
            self.disk_cache_evictions.clone(),
        );
        sub.register("size_bytes", "Bytes the disk cache's files take now", self.disk_cache_size_bytes.clone());
        sub.register(
            "writable",
            "1 while the disk cache directory takes writes, 0 after a failed write",
            self.disk_cache_writable.clone(),
        );
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
