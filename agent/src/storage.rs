//! Object storage behind one pooled client per process: a local directory (the embedded default) or S3.
//!
//! Either way, an object's name is its canonical path below the route prefix, byte for byte: `/videos/café noir.mp4`
//! is the file `café noir.mp4` or the S3 key `{prefix}/café noir.mp4`, never an escaped spelling of it.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use http::HeaderValue;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as StorePath;
use object_store::{Attribute, ClientOptions, GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt};

use crate::conditional::{http_date, quote_etag};
use crate::local::{self, LocalDir, Pool};

/// Where objects live, parsed from `--storage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `file:///dir`
    Dir(std::path::PathBuf),
    /// `s3://bucket/prefix`
    S3 { bucket: String, prefix: String },
}

/// Settings for S3-compatible stores (AWS S3, MinIO, R2, GCS's S3 interface, versitygw).
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("--storage must be file:///absolute/dir or s3://bucket[/prefix], not {0:?}")]
    BadUrl(String),
    #[error("the object does not exist")]
    NotFound,
    #[error("the object changed while it was being read")]
    Changed,
    #[error("storage did not answer within {0:?}")]
    Timeout(Duration),
    /// The memory budget for slices is in use by other streams (see `cache.rs`).
    #[error("the memory for streams is in use; retry shortly")]
    Busy,
    #[error("storage failed: {0}")]
    Unavailable(String),
    /// Every storage thread is held by a call that outlived the timeout (see [`Pool`]).
    #[error("{stuck} of {of} storage threads are stuck in calls storage has not answered")]
    Stuck { stuck: usize, of: usize },
}

impl From<object_store::Error> for StorageError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => StorageError::NotFound,
            object_store::Error::Precondition { .. } => StorageError::Changed,
            // The display of object_store errors names the store and the path, never credentials.
            other => StorageError::Unavailable(other.to_string()),
        }
    }
}

impl Location {
    pub fn parse(url: &str) -> Result<Location, StorageError> {
        if let Some(dir) = url.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(StorageError::BadUrl(url.into()));
            }
            return Ok(Location::Dir(dir.into()));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StorageError::BadUrl(url.into()));
            }
            return Ok(Location::S3 { bucket: bucket.into(), prefix: prefix.trim_matches('/').into() });
        }
        Err(StorageError::BadUrl(url.into()))
    }
}

/// What a response needs to know about an object before sending a byte.
#[derive(Debug, Clone)]
pub struct Meta {
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: SystemTime,
    /// The quoted `ETag` and the `Last-Modified` header values, formatted once per lookup (the metadata cache keeps
    /// them) instead of once per response: formatting both was about 5 % of a `bytes=0-1` request (bench/PROFILE.md).
    pub etag_header: Option<HeaderValue>,
    pub last_modified_header: HeaderValue,
}

impl Meta {
    pub fn new(size: u64, etag: Option<String>, last_modified: SystemTime) -> Meta {
        let etag_header = etag.as_deref().and_then(|t| HeaderValue::from_str(&quote_etag(t)).ok());
        Meta { size, etag, last_modified, etag_header, last_modified_header: http_date(last_modified) }
    }

    /// The strong or weak entity tag as sent in `ETag`, for comparing with conditional headers.
    pub fn quoted_etag(&self) -> Option<&str> {
        self.etag_header.as_ref().and_then(|v| v.to_str().ok())
    }
}

/// An opened object: its bytes as a stream, and a content type if storage knows one.
pub struct Body {
    pub stream: BoxStream<'static, Result<Bytes, StorageError>>,
    pub content_type: Option<String>,
}

/// The storage client. Cloning shares the connection pool.
#[derive(Clone, Debug)]
pub struct Storage {
    backend: Backend,
    timeout: Duration,
    /// Threads for a local directory's blocking calls.
    pool: Pool,
}

#[derive(Clone, Debug)]
enum Backend {
    /// A directory, every object opened beneath it (see [`crate::local`]).
    Dir(LocalDir),
    Store {
        store: Arc<dyn ObjectStore>,
        prefix: String,
    },
}

impl Storage {
    /// Builds the one client of the process. S3 credentials come from the usual AWS environment variables.
    /// `max_threads` bounds the blocking calls on a local directory (`--max-storage-threads`).
    pub fn new(
        location: &Location,
        s3: &S3Options,
        timeout: Duration,
        max_threads: usize,
    ) -> Result<Storage, StorageError> {
        let backend = match location {
            Location::Dir(dir) => Backend::Dir(LocalDir::open(dir)?),
            Location::S3 { bucket, prefix } => {
                // No whole-request timeout: a long film streams for minutes. Stalls are caught per chunk instead.
                let client = ClientOptions::new()
                    .with_connect_timeout(timeout)
                    .with_timeout_disabled()
                    .with_allow_http(true)
                    .with_pool_idle_timeout(Duration::from_secs(60));
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_client_options(client)
                    .with_virtual_hosted_style_request(!s3.path_style);
                if let Some(endpoint) = &s3.endpoint {
                    b = b.with_endpoint(endpoint);
                }
                if let Some(region) = &s3.region {
                    b = b.with_region(region);
                }
                let store = Arc::new(b.build().map_err(|e| StorageError::Unavailable(e.to_string()))?);
                Backend::Store { store, prefix: prefix.clone() }
            }
        };
        Ok(Storage { backend, timeout, pool: Pool::new(max_threads, timeout) })
    }

    /// The key of exactly this name. `object` is a canonical path below the route prefix (no control characters,
    /// no empty, `.` or `..` segments), which `Path::parse` takes as it is; `Path::from` would percent-encode
    /// `% # [ ] { } ^ | ~` and reach another key.
    fn key(prefix: &str, object: &str) -> Result<StorePath, StorageError> {
        let key = if prefix.is_empty() { object.to_owned() } else { format!("{prefix}/{object}") };
        StorePath::parse(&key).map_err(|_| StorageError::NotFound)
    }

    /// Size, ETag and modification time.
    pub async fn head(&self, object: &str) -> Result<Meta, StorageError> {
        match &self.backend {
            Backend::Dir(dir) => {
                let (dir, object) = (dir.clone(), object.to_owned());
                self.pool.run(move || dir.open_object(&object).map(|(_, meta)| meta)).await
            }
            Backend::Store { store, prefix } => {
                let key = Self::key(prefix, object)?;
                let meta = tokio::time::timeout(self.timeout, store.head(&key))
                    .await
                    .map_err(|_| StorageError::Timeout(self.timeout))??;
                Ok(Meta::new(meta.size, meta.e_tag, meta.last_modified.into()))
            }
        }
    }

    /// The threads for blocking storage calls: how many, and how many are stuck.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Whether storage answers at all (a missing object is an answer): the readiness probe's storage check.
    pub async fn ping(&self) -> Result<(), StorageError> {
        if let Backend::Dir(dir) = &self.backend {
            // Even a stat of the root can hang on a stuck file system: never on the runtime's threads.
            let dir = dir.clone();
            return self.pool.run(move || dir.ping()).await;
        }
        match self.head(".videodelivery-readiness-probe").await {
            Ok(_) | Err(StorageError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether objects are files in a local directory (which `--sendfile` can send without reading them).
    pub fn is_local(&self) -> bool {
        matches!(self.backend, Backend::Dir(_))
    }

    /// The open file behind `object` for `sendfile`, failing if it no longer has `etag` or no longer holds `range`;
    /// `None` for a bucket, or a file `sendfile` must not be used on (see [`local::sendfile_safe`]).
    pub async fn open_local(
        &self,
        object: &str,
        etag: Option<&str>,
        range: &Range<u64>,
    ) -> Result<Option<std::fs::File>, StorageError> {
        let Backend::Dir(dir) = &self.backend else {
            return Ok(None);
        };
        let (dir, object) = (dir.clone(), object.to_owned());
        let (file, meta, safe) = self
            .pool
            .run(move || {
                let (file, meta) = dir.open_object(&object)?;
                let safe = local::sendfile_safe(&file);
                Ok((file, meta, safe))
            })
            .await?;
        unchanged(&meta, etag, range)?;
        Ok(safe.then_some(file))
    }

    /// Streams `range` of an object, failing if it no longer has `etag`. A stall longer than the timeout between
    /// two chunks ends the stream with an error, so a client never waits forever on a hung store.
    pub async fn get(&self, object: &str, range: Range<u64>, etag: Option<&str>) -> Result<Body, StorageError> {
        self.get_in_chunks(object, range, etag, local::FILE_CHUNK).await
    }

    /// As [`Storage::get`], reading a local file `chunk` bytes at a time (a store's chunks are what the network
    /// delivers), for streams that must hold little.
    pub async fn get_in_chunks(
        &self,
        object: &str,
        range: Range<u64>,
        etag: Option<&str>,
        chunk: usize,
    ) -> Result<Body, StorageError> {
        let timeout = self.timeout;
        let (stream, content_type) = match &self.backend {
            Backend::Dir(dir) => {
                let (dir, object) = (dir.clone(), object.to_owned());
                let (file, meta) = self.pool.run(move || dir.open_object(&object)).await?;
                unchanged(&meta, etag, &range)?;
                (local::file_stream(self.pool.clone(), file, range, chunk), None)
            }
            Backend::Store { store, prefix } => {
                let key = Self::key(prefix, object)?;
                let opts = GetOptions {
                    range: Some(GetRange::Bounded(range)),
                    if_match: etag.map(str::to_owned),
                    ..GetOptions::default()
                };
                let result = tokio::time::timeout(timeout, store.get_opts(&key, opts))
                    .await
                    .map_err(|_| StorageError::Timeout(timeout))??;
                let content_type = result.attributes.get(&Attribute::ContentType).map(|v| v.to_string());
                let stream = match result.payload {
                    GetResultPayload::File(file, _) => local::file_stream(self.pool.clone(), file, result.range, chunk),
                    GetResultPayload::Stream(s) => s.map_err(StorageError::from).boxed(),
                };
                (stream, content_type)
            }
        };
        let stream = futures::stream::unfold(stream, move |mut s| async move {
            match tokio::time::timeout(timeout, s.next()).await {
                Ok(Some(item)) => Some((item, s)),
                Ok(None) => None,
                Err(_) => Some((Err(StorageError::Timeout(timeout)), s)),
            }
        });
        Ok(Body { stream: stream.boxed(), content_type })
    }
}

/// An opened local file is still the version asked for (`etag`) and still holds `range`.
fn unchanged(meta: &Meta, etag: Option<&str>, range: &Range<u64>) -> Result<(), StorageError> {
    if (etag.is_some() && meta.etag.as_deref() != etag) || range.end > meta.size {
        return Err(StorageError::Changed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(Location::parse("file:///srv/media").unwrap(), Location::Dir("/srv/media".into()));
        assert_eq!(
            Location::parse("s3://bucket/a/b/").unwrap(),
            Location::S3 { bucket: "bucket".into(), prefix: "a/b".into() }
        );
        assert_eq!(
            Location::parse("s3://bucket").unwrap(),
            Location::S3 { bucket: "bucket".into(), prefix: "".into() }
        );
        for bad in ["file://relative", "s3://", "http://x", "/srv"] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }
}
