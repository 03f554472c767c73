//! Object storage behind one pooled client per process: a local directory (the embedded default) or S3.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{Attribute, ClientOptions, GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt};

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
    #[error("storage failed: {0}")]
    Unavailable(String),
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
}

/// An opened object: its bytes as a stream, and a content type if storage knows one.
pub struct Body {
    pub stream: BoxStream<'static, Result<Bytes, StorageError>>,
    pub content_type: Option<String>,
}

/// The storage client. Cloning shares the connection pool.
#[derive(Clone, Debug)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    timeout: Duration,
}

impl Storage {
    /// Builds the one client of the process. S3 credentials come from the usual AWS environment variables.
    pub fn new(location: &Location, s3: &S3Options, timeout: Duration) -> Result<Storage, StorageError> {
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match location {
            Location::Dir(dir) => (
                Arc::new(LocalFileSystem::new_with_prefix(dir).map_err(|e| StorageError::Unavailable(e.to_string()))?),
                String::new(),
            ),
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
                (Arc::new(b.build().map_err(|e| StorageError::Unavailable(e.to_string()))?), prefix.clone())
            }
        };
        Ok(Storage { store, prefix, timeout })
    }

    fn key(&self, object: &str) -> StorePath {
        // `object` is a canonical path below the route prefix (no '.', '..' or empty segments); from_iter
        // percent-encodes what object_store would otherwise treat specially.
        let parts = self.prefix.split('/').chain(object.split('/')).filter(|s| !s.is_empty());
        StorePath::from_iter(parts)
    }

    /// Size, ETag and modification time; also the readiness probe's storage check.
    pub async fn head(&self, object: &str) -> Result<Meta, StorageError> {
        let key = self.key(object);
        let meta = tokio::time::timeout(self.timeout, self.store.head(&key))
            .await
            .map_err(|_| StorageError::Timeout(self.timeout))??;
        Ok(Meta { size: meta.size, etag: meta.e_tag, last_modified: meta.last_modified.into() })
    }

    /// Whether storage answers at all (a missing object is an answer).
    pub async fn ping(&self) -> Result<(), StorageError> {
        match self.head(".videodelivery-readiness-probe").await {
            Ok(_) | Err(StorageError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Streams `range` of an object, failing if it no longer has `etag`. A stall longer than the timeout between
    /// two chunks ends the stream with an error, so a client never waits forever on a hung store.
    pub async fn get(&self, object: &str, range: Range<u64>, etag: Option<&str>) -> Result<Body, StorageError> {
        let key = self.key(object);
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range)),
            if_match: etag.map(str::to_owned),
            ..GetOptions::default()
        };
        let result = tokio::time::timeout(self.timeout, self.store.get_opts(&key, opts))
            .await
            .map_err(|_| StorageError::Timeout(self.timeout))??;
        let content_type = result.attributes.get(&Attribute::ContentType).map(|v| v.to_string());
        let timeout = self.timeout;
        let stream = match result.payload {
            // object_store reads local files 8 KiB per blocking task; 256 KiB reads cut the thread hops 32-fold.
            GetResultPayload::File(file, _) => file_stream(file, result.range).await?,
            GetResultPayload::Stream(s) => s.map_err(StorageError::from).boxed(),
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

/// Bytes read from a local file per blocking read.
const FILE_CHUNK: usize = 256 * 1024;

async fn file_stream(
    file: std::fs::File,
    range: Range<u64>,
) -> Result<BoxStream<'static, Result<Bytes, StorageError>>, StorageError> {
    // Each chunk is one positioned read straight into the buffer that becomes the body chunk: no seek, and no
    // copy through an intermediate buffer (tokio::fs::File reads into its own buffer, then copies; callgrind
    // showed that copy as most of the agent's instructions per MiB).
    let file = Arc::new(file);
    let end = range.end;
    let chunks = futures::stream::try_unfold(range.start, move |pos| {
        let file = file.clone();
        async move {
            if pos >= end {
                return Ok(None);
            }
            let len = (end - pos).min(FILE_CHUNK as u64) as usize;
            let read = tokio::task::spawn_blocking(move || pread_exact(&file, pos, len));
            let chunk = read
                .await
                .map_err(|e| StorageError::Unavailable(format!("reading a local file: {e}")))?
                .map_err(|e| StorageError::Unavailable(format!("reading a local file: {e}")))?;
            Ok(Some((chunk, pos + len as u64)))
        }
    });
    Ok(chunks.boxed())
}

/// Reads `len` bytes at `pos` into a fresh buffer without first zeroing it (zeroing showed as the next hot spot
/// once the copy was gone).
fn pread_exact(file: &std::fs::File, pos: u64, len: usize) -> std::io::Result<Bytes> {
    use std::os::fd::AsRawFd;
    let mut buf = bytes::BytesMut::with_capacity(len);
    while buf.len() < len {
        let filled = buf.len();
        let at = libc::off_t::try_from(pos + filled as u64).map_err(std::io::Error::other)?;
        let spare = buf.spare_capacity_mut();
        let want = (len - filled).min(spare.len());
        // SAFETY: the kernel writes at most `want` bytes into the spare capacity, which is valid for writes of
        // that many bytes; only the bytes it reports written are then marked initialised.
        let n = unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), want, at) };
        match n {
            // SAFETY: the kernel initialised exactly `n` bytes after the filled part.
            n if n > 0 => unsafe { buf.set_len(filled + n as usize) },
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(buf.freeze())
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
