//! Object metadata (size, ETag, modification time) remembered for a short time.
//!
//! Without it every request asks storage for the object's metadata before a byte is sent, even when every slice
//! is in memory: one storage round trip per request is what kept a warm agent close to direct S3 reads. With it,
//! a replaced object is noticed within the TTL: every storage read still carries `If-Match` with the remembered
//! ETag, and a mismatch drops the entry and the request starts over with fresh metadata. Only answers served
//! wholly from cached slices can be up to one TTL old. Concurrent lookups of one object share one storage request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;

use crate::metrics::Metrics;
use crate::storage::{Meta, Storage, StorageError};

/// Objects whose metadata is kept; an entry is a few hundred bytes.
const MAX_ENTRIES: u64 = 100_000;

pub struct MetaCache {
    entries: Option<Cache<Arc<str>, Meta, foldhash::fast::RandomState>>,
}

impl MetaCache {
    /// A TTL of zero asks storage on every request.
    pub fn new(ttl: Duration) -> MetaCache {
        let entries = (!ttl.is_zero()).then(|| {
            // foldhash, seeded per process, costs a fraction of SipHash per lookup; the names hashed are those a
            // valid token grants, so nobody can flood the map with chosen collisions without a signing key.
            Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_live(ttl)
                .build_with_hasher(foldhash::fast::RandomState::default())
        });
        MetaCache { entries }
    }

    /// The object's metadata, from memory when it is younger than the TTL. Errors (a missing object, a storage
    /// failure) are never remembered.
    pub async fn get(&self, storage: &Storage, object: &str, metrics: &Metrics) -> Result<Meta, StorageError> {
        let head = async {
            let t = Instant::now();
            let meta = storage.head(object).await;
            metrics.storage_latency.observe(t.elapsed().as_secs_f64());
            meta
        };
        let Some(entries) = &self.entries else {
            return head.await;
        };
        // A hit, the common case, borrows the name: no key is built, and no loader is set up.
        if let Some(meta) = entries.get(object).await {
            return Ok(meta);
        }
        entries.try_get_with(Arc::from(object), head).await.map_err(|e: Arc<StorageError>| (*e).clone())
    }

    /// Forgets an object whose stored ETag no longer matches.
    pub async fn invalidate(&self, object: &str) {
        if let Some(entries) = &self.entries {
            entries.invalidate(object).await;
        }
    }
}
